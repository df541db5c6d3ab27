#include "worker/corpus.h"

/* Written for lorad: everyday prose, a little dialogue, numbers and
 * punctuation, so that the merges cover common English words, spaces,
 * digits and the shapes of chat data. */
static const char CORPUS[] =
    "The morning was cold and clear, and the river ran fast under the old stone bridge. "
    "A woman with a red scarf walked her dog along the bank, stopping now and then to look at the water. "
    "On the far side, a man was fixing the roof of a small house. He had a ladder, a box of nails and a "
    "radio that played the same three songs all day.\n\n"
    "People in the town said the bridge was built more than two hundred years ago. Nobody knew the name "
    "of the builder, but everyone agreed that he knew what he was doing, because the bridge had survived "
    "every flood since then. In the spring of 1998 the water rose higher than ever before, and still the "
    "bridge stood.\n\n"
    "Question: What is the capital of France?\nAnswer: The capital of France is Paris.\n\n"
    "Question: How many days are there in a week?\nAnswer: There are seven days in a week.\n\n"
    "Question: Why is the sky blue?\nAnswer: Sunlight is scattered by the air, and blue light is scattered "
    "more than red light, so the sky looks blue during the day.\n\n"
    "To make a simple bread, mix 500 grams of flour, 10 grams of salt, 7 grams of yeast and 320 grams of "
    "warm water. Knead the dough for ten minutes, let it rise for an hour, shape it, let it rise again, and "
    "bake it at 220 degrees for about 30 minutes. The bread is done when it sounds hollow when you tap the "
    "bottom.\n\n"
    "User: Can you help me write a short note to my neighbour?\n"
    "Assistant: Of course. Here is a short note: \"Hello! I will be away next week. Could you please water "
    "my plants on Tuesday and Friday? Thank you very much for your help.\"\n\n"
    "User: Summarize the following paragraph in one sentence.\n"
    "Assistant: The paragraph explains that regular exercise improves sleep, mood and long-term health.\n\n"
    "Summary:\nThe model learns to follow a fixed format.\n\nKey Points:\n- The data is small.\n"
    "- The format is strict.\n- The results are easy to check.\n\nLimitation:\nThe test set is small.\n\n"
    "Follow-up Question:\nWould the same method work on a larger model?\n\n"
    "Computers store numbers as bits. A byte has eight bits and can hold a value from 0 to 255. Text is "
    "stored as a sequence of bytes, and a tokenizer turns those bytes into pieces that a language model "
    "can read. Common words become single tokens, while rare words are split into smaller parts.\n\n"
    "Training a model means showing it many examples and adjusting its weights a little after each one, "
    "so that its predictions become better over time. The learning rate controls how large each step is. "
    "If the rate is too high, the loss jumps around; if it is too low, training takes a very long time.\n\n"
    "The children played in the garden until the sun went down. Their mother called them in for dinner: "
    "soup, fresh bread, cheese and apples from the tree behind the house. After dinner they read a book "
    "about a fox who wanted to fly, and a bird who wanted to run. In the end they became friends and "
    "learned that each of them was good at something different.\n\n"
    "It is important to check your work. Read the question again, make sure the answer is complete, and "
    "look for small mistakes in names, numbers and dates. A careful answer is better than a fast one.\n\n"
    "The train left the station at 8:15 and arrived in the city at 9:40. Most passengers were reading, "
    "sleeping or looking out of the window at the fields, the farms and the distant hills. A young man "
    "near the door was learning a new language with a small green notebook.\n\n"
    "Weather report: cloudy in the morning, with rain in the afternoon. Temperatures between 12 and 17 "
    "degrees. Light wind from the west. Tomorrow will be dry and sunny, with a high of 21 degrees.\n\n"
    "Good software is simple to read, easy to test and honest about its errors. When something fails, "
    "the message should say what went wrong and what the user can do about it. Small functions with "
    "clear names are easier to understand than long ones that try to do everything at once.\n\n"
    "Thank you for your question. I am happy to help. Please let me know if you need anything else.\n";

const char *corpus_text(size_t *len) {
    *len = sizeof CORPUS - 1;
    return CORPUS;
}
