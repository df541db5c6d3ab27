/* chat: chat templates, rendered straight to token ids and training labels.
 *
 * A conversation (system/user/assistant messages) becomes the exact text a
 * model's own Hugging Face chat_template produces (no tools, no generation
 * prompt unless asked) and the ids of that text, with a parallel label array:
 * labels[i] = ids[i] on trained positions (assistant content and the token
 * that ends the assistant turn: <|im_end|>, <|eot_id|> or </s>, so the model
 * learns to stop), -100 elsewhere.
 *
 * Special tokens (<|im_start|>, <s>, ...) are placed by the template as ids;
 * message text is tokenized with special-token parsing off, so a user who
 * writes "<|im_end|>" in a message gets those characters, never the token.
 * The text between two special tokens is tokenized as one piece, exactly as
 * Hugging Face tokenizes the rendered string, so ids match
 * apply_chat_template(tokenize=True) token for token; where a token straddles
 * the start of the assistant content, it counts as trained.
 *
 * Templates (what lorad does where models differ):
 *  - chatml (Qwen2/2.5): "<|im_start|>role\ncontent<|im_end|>\n" per message.
 *    With no system message in the row and no job system_prompt, the model's
 *    own default system message is inserted when its tokenizer_config.json
 *    template has one (Qwen2.5: "You are Qwen, created by Alibaba Cloud. You
 *    are a helpful assistant.", Qwen2: "You are a helpful assistant."),
 *    because that is what the model sees at inference through the same
 *    template; plain ChatML has none.
 *  - llama3: <|begin_of_text|> then "<|start_header_id|>role<|end_header_id|>
 *    \n\ncontent<|eot_id|>" per message, content trimmed as the real template
 *    does. When the model's template is the 3.1+ one (it writes "Cutting
 *    Knowledge Date"), a system block with those date lines is always
 *    written, with the template's fixed fallback date "26 Jul 2024" (never
 *    today's date: training data must not change with the calendar).
 *  - mistral: "<s>[INST] user [/INST]answer</s>..." (roles must alternate
 *    user/assistant from a user turn). The real template rejects a system
 *    message; lorad puts it in front of the first user message, separated by
 *    a blank line, as later Mistral templates do.
 *  - alpaca: the Stanford Alpaca prompt ("Below is an instruction ...",
 *    "### Instruction:", optional "### Input:", "### Response:"), answer, EOS;
 *    a system message replaces the preamble; later turns are separated by a
 *    blank line. BOS first when the tokenizer adds one.
 *  - plain: system + "\n\n", user text, assistant text + EOS, nothing else
 *    (prompt + completion + EOS). BOS first when the tokenizer adds one.
 * BOS appears at most once: templates that write it (llama3, mistral) place
 * it, and tok_encode never adds one. */
#ifndef LR_CHAT_H
#define LR_CHAT_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"
#include "proto/jobspec.h"
#include "formats/tok.h"

#define CHAT_IGNORE (-100)
/* The longest system prompt a template may carry. */
#define CHAT_MAX_SYSTEM 4096

typedef enum {
    CHAT_SYSTEM,
    CHAT_USER,
    CHAT_ASSISTANT,
    /* Alpaca's "input": context for the user message just before it. The
     * alpaca template writes it under "### Input:"; the others append it to
     * that user message after a blank line. */
    CHAT_INPUT,
} chat_role;

typedef struct chat_msg {
    chat_role role;
    const char *text;  /* UTF-8, need not be NUL-terminated */
    size_t len;
    int train;         /* assistant only: 1 = a training target (OpenAI's "weight") */
} chat_msg;

typedef struct chat {
    const tok *t;
    chat_tpl kind;          /* resolved, never TPL_AUTO */
    char default_system[CHAT_MAX_SYSTEM]; /* chatml: the model's default; "" none */
    int llama3_dated;       /* llama3: the 3.1+ system block with date lines */
    int add_bos;            /* alpaca/plain: BOS first */
    int32_t bos, eos;       /* -1 when the template does not use them */
    int32_t im_start, im_end;                   /* chatml */
    int32_t start_header, end_header, eot;      /* llama3 */
} chat;

typedef struct chat_out {
    int32_t *ids;     /* n each, caller frees with chat_out_free */
    int32_t *labels;
    size_t n;
    char *text;       /* the rendered string (specials written out), when asked */
    size_t text_len;
} chat_out;

/* Resolves the template for a tokenizer. model_path (may be NULL) is the
 * model directory, a tokenizer.json inside one, or a tokenizer folder: its
 * tokenizer_config.json chat_template and config.json model_type guide
 * `auto` and the template variants (default system message, Llama-3.1 date
 * lines). auto picks, in order: the template text (<|im_start|> → chatml,
 * <|start_header_id|> → llama3, [INST] → mistral), the tokens the tokenizer
 * has (<|im_start|>+<|im_end|> → chatml, <|start_header_id|>+<|eot_id|> →
 * llama3), model_type mistral → mistral, else plain. Fails when the
 * tokenizer lacks a token the template needs. */
int chat_init(chat *c, const tok *t, chat_tpl kind, const char *model_path, lr_err *err) LR_WARN_UNUSED;

/* Renders msgs. system_prompt (may be NULL/"") is used when the first
 * message is not a system message; add_generation_prompt appends the
 * assistant header (for prompts, not training). want_text also fills
 * out->text. Errors name the problem ("mistral template: roles must
 * alternate user/assistant"), not the row: the caller adds the line. */
int chat_render(const chat *c, const chat_msg *msgs, int n, const char *system_prompt,
                int add_generation_prompt, int want_text, chat_out *out, lr_err *err) LR_WARN_UNUSED;

void chat_out_free(chat_out *o);

/* "system" → CHAT_SYSTEM ...; -1 when not one of system, user, assistant. */
int chat_role_parse(const char *s);
const char *chat_role_name(chat_role r);

#endif
