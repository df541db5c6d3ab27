/* gemm_select: CPUID, the OpenBLAS core-type switch, the self-test. */
#include "kernels/cpu/gemm_select.h"

#include <cblas.h>
#include <dlfcn.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

static pthread_once_t once = PTHREAD_ONCE_INIT;
static kg_kernel cur;
static char loaded_core[32]; /* OpenBLAS's choice at load, before any switch */

/* ---- CPU features ---- */

#if defined(__x86_64__) || defined(__i386__)
static uint64_t xgetbv0(void) {
    uint32_t a, d;
    __asm__ volatile("xgetbv" : "=a"(a), "=d"(d) : "c"(0));
    return ((uint64_t)d << 32) | a;
}

void kg_cpu_features(kg_cpu *o) {
    unsigned a, b, c, d;
    memset(o, 0, sizeof *o);
    if (!__get_cpuid(0, &a, &b, &c, &d)) return;
    unsigned max = a;
    memcpy(o->vendor, &b, 4);
    memcpy(o->vendor + 4, &d, 4);
    memcpy(o->vendor + 8, &c, 4);
    __get_cpuid(1, &a, &b, &c, &d);
    /* A vector unit counts only when the OS saves its registers (XCR0):
     * bits 1-2 for YMM, 5-7 for the AVX-512 mask and ZMM state, 17-18 AMX. */
    uint64_t xcr0 = (c >> 27 & 1) ? xgetbv0() : 0;
    int ymm = (xcr0 & 0x6) == 0x6, zmm = ymm && (xcr0 & 0xe0) == 0xe0, tiles = (xcr0 & 0x60000) == 0x60000;
    o->sse3 = c & 1;
    o->fma = (c >> 12 & 1) && ymm;
    o->avx = (c >> 28 & 1) && ymm;
    if (max < 7) return;
    __cpuid_count(7, 0, a, b, c, d);
    o->avx2 = (b >> 5 & 1) && ymm;
    o->avx512f = (b >> 16 & 1) && zmm;
    o->avx512dq = (b >> 17 & 1) && zmm;
    o->avx512bw = (b >> 30 & 1) && zmm;
    o->avx512vl = (b >> 31 & 1) && zmm;
    o->amx_bf16 = (d >> 22 & 1) && tiles;
    __cpuid_count(7, 1, a, b, c, d);
    o->avx512_bf16 = (a >> 5 & 1) && zmm;
}
#else
void kg_cpu_features(kg_cpu *o) { memset(o, 0, sizeof *o); }
#endif

/* ---- OpenBLAS core types ---- */

static const struct {
    const char *core, *isa;
} core_isa[] = {
    {"SkylakeX", "avx512"},  {"Cooperlake", "avx512"}, {"SapphireRapids", "avx512"}, {"Haswell", "avx2"},
    {"Zen", "avx2"},         {"Sandybridge", "avx"},   {"Bulldozer", "avx"},         {"Piledriver", "avx"},
    {"Steamroller", "avx"},  {"Excavator", "avx"},
};
static const char *const isa_order[] = {"scalar", "sse", "avx", "avx2", "avx512"};

static const char *isa_of_core(const char *core) {
    for (size_t i = 0; i < sizeof core_isa / sizeof core_isa[0]; i++)
        if (!strcasecmp(core, core_isa[i].core)) return core_isa[i].isa;
    return "sse"; /* every other x86-64 core type OpenBLAS has (Prescott, Nehalem, ...) */
}

static int isa_rank(const char *isa) {
    for (int i = 0; i < (int)(sizeof isa_order / sizeof isa_order[0]); i++)
        if (!strcmp(isa, isa_order[i])) return i;
    return 0;
}

static int cpu_avx512(const kg_cpu *c) { return c->avx512f && c->avx512bw && c->avx512dq && c->avx512vl; }

/* The core type with the widest sgemm kernels these features run, or NULL.
 * SkylakeX rather than Cooperlake on AVX512_BF16 CPUs: the same f32
 * kernels (Cooperlake adds only bf16 ones) and never slower here. */
static const char *core_for(const kg_cpu *c) {
    if (cpu_avx512(c)) return "SkylakeX";
    if (c->avx2 && c->fma) return strcmp(c->vendor, "AuthenticAMD") ? "Haswell" : "Zen";
    if (c->avx) return "Sandybridge";
    return NULL;
}

static void ob_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                     int ldb, float beta, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                lda, B, ldb, beta, C, ldc);
}

static void redispatch(void (*quit)(void), void (*init)(void), const char *core) {
    /* The variable is set only for the call: the user's value (or its
     * absence) is what a child process sees. */
    const char *was = getenv("OPENBLAS_CORETYPE");
    char keep[64];
    snprintf(keep, sizeof keep, "%s", was ? was : "");
    setenv("OPENBLAS_CORETYPE", core, 1);
    quit();
    init();
    if (was)
        setenv("OPENBLAS_CORETYPE", keep, 1);
    else
        unsetenv("OPENBLAS_CORETYPE");
}

/* Re-runs OpenBLAS's dispatch with OPENBLAS_CORETYPE = core, the way its
 * constructor would have at load. Safe only while no BLAS call is running,
 * which holds on first use and in the benchmark. A name OpenBLAS does not
 * know leaves the previous core type in place. */
static int switch_core(const char *core, lr_err *err) {
    char prev[32];
    snprintf(prev, sizeof prev, "%s", openblas_get_corename());
    if (!strcasecmp(prev, core)) return 0;
    void (*quit)(void) = NULL, (*init)(void) = NULL;
    *(void **)&quit = dlsym(RTLD_DEFAULT, "gotoblas_dynamic_quit");
    *(void **)&init = dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init");
    if (!quit || !init)
        return lr_errf(err, "this OpenBLAS (%s) cannot change core type at run time: it is not a DYNAMIC_ARCH build",
                       openblas_get_config());
    redispatch(quit, init, core);
    if (strcasecmp(openblas_get_corename(), core)) {
        redispatch(quit, init, prev);
        return lr_errf(err, "OpenBLAS has no core type %s (it keeps %s)", core, prev);
    }
    return 0;
}

/* ---- reference and self-test ---- */

void kg_sgemm_ref(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (double)(ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                     (tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
            float *c = &C[(size_t)i * ldc + j];
            *c = beta == 0.0f ? (float)(alpha * s) : (float)(alpha * s + (double)beta * *c);
        }
}

/* Shapes that break kernels: size 1, odd sizes around the register blocks,
 * tiny M (a LoRA rank, one token), M == K (where a transpose mix-up
 * still reads in bounds), and two past OpenBLAS's small-matrix
 * path (M*N*K > 1e6) so its main blocked kernels run too. */
static const struct {
    int M, N, K;
    float alpha, beta;
} shapes[] = {
    {1, 1, 1, 1.0f, 0.0f},      {1, 67, 129, 1.0f, 0.0f},   {7, 1, 300, 0.5f, 1.0f},    {2, 33, 5, -1.25f, 0.75f},
    {33, 65, 17, 1.0f, 1.0f},   {17, 3, 64, 1.0f, 0.0f},    {16, 47, 35, 2.0f, -1.0f},  {24, 40, 24, 1.0f, 0.5f},
    {129, 95, 131, 0.5f, 0.0f}, {200, 67, 160, 1.0f, 1.0f},
};
#define ST_PAD 3 /* extra leading-dimension columns, which must stay untouched */

static float st_val(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)((*s >> 40) & 0xffff) / 32768.0f - 1.0f;
}

/* One shape and transpose pair: 0, or -1 with the first bad element. */
static int st_case(kg_sgemm_fn fn, int M, int N, int K, int ta, int tb, float alpha, float beta, float *buf,
                   lr_err *err) {
    int lda = (ta ? M : K) + ST_PAD, ldb = (tb ? K : N) + ST_PAD, ldc = N + ST_PAD;
    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
    float *A = buf, *B = A + na, *C = B + nb, *C0 = C + nc;
    uint64_t s = 0x9e3779b97f4a7c15ull ^ (uint64_t)(M * 131 + N * 7 + K + ta * 2 + tb);
    for (size_t i = 0; i < na; i++) A[i] = st_val(&s);
    for (size_t i = 0; i < nb; i++) B[i] = st_val(&s);
    for (size_t i = 0; i < nc; i++) C0[i] = beta == 0.0f ? NAN : st_val(&s);
    memcpy(C, C0, nc * sizeof *C);
    fn(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < ldc; j++) {
            size_t at = (size_t)i * ldc + j;
            if (j >= N) {
                if (memcmp(&C[at], &C0[at], sizeof *C))
                    return lr_errf(err, "sgemm %c%c M=%d N=%d K=%d wrote C[%d][%d], outside the matrix",
                                   ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, i, j);
                continue;
            }
            double ref = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                double p = (double)(ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                           (tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
                ref += p;
                mag += fabs(p);
            }
            ref *= alpha;
            mag *= fabs(alpha);
            if (beta != 0.0f) {
                ref += (double)beta * C0[at];
                mag += fabs((double)beta * C0[at]);
            }
            /* float accumulation in any order stays within K+2 roundings of mag */
            double tol = (K + 2) * FLT_EPSILON * mag + 1e-30;
            if (!(fabs(C[at] - ref) <= tol))
                return lr_errf(err, "sgemm %c%c M=%d N=%d K=%d alpha=%g beta=%g: C[%d][%d] = %.9g, reference %.9g",
                               ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, beta, i, j, C[at], ref);
        }
    return 0;
}

int kg_selftest(kg_sgemm_fn fn, lr_err *err) {
    size_t most = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        size_t M = shapes[i].M + ST_PAD, N = shapes[i].N + ST_PAD, K = shapes[i].K + ST_PAD;
        size_t need = M * K + K * N + 2 * M * N; /* A, B, C, C0, each padded */
        if (need > most) most = need;
    }
    float *buf = malloc(most * sizeof *buf);
    if (!buf) return lr_errp(err, LR_E_NOMEM, NULL, "out of memory for the sgemm self-test");
    int rc = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0] && !rc; i++)
        for (int t = 0; t < 4 && !rc; t++)
            rc = st_case(fn, shapes[i].M, shapes[i].N, shapes[i].K, t & 1, t >> 1, shapes[i].alpha, shapes[i].beta,
                         buf, err);
    free(buf);
    return rc;
}

/* ---- choosing ---- */

int kg_pick(const kg_candidate *cands, int n, const char *how, lr_err *err) {
    char refused[512] = "", entry[32];
    snprintf(entry, sizeof entry, "%s", openblas_get_corename());
    for (int i = 0; i < n; i++) {
        lr_err e = {0};
        if ((cands[i].core && switch_core(cands[i].core, &e)) || kg_selftest(cands[i].sgemm, &e)) {
            fprintf(stderr, "lora-worker: warning: sgemm kernel %s refused: %s%s\n", cands[i].name, e.msg,
                    i + 1 < n ? "; trying the next one" : "");
            size_t len = strlen(refused);
            snprintf(refused + len, sizeof refused - len, "%s%.40s refused (%.200s)", len ? "; " : "",
                     cands[i].name, e.msg);
            continue;
        }
        int openblas = cands[i].sgemm == ob_sgemm;
        if (openblas)
            snprintf(cur.name, sizeof cur.name, "OpenBLAS %s", openblas_get_corename());
        else
            snprintf(cur.name, sizeof cur.name, "%s", cands[i].name);
        snprintf(cur.isa, sizeof cur.isa, "%s", openblas ? isa_of_core(openblas_get_corename()) : "scalar");
        snprintf(cur.how, sizeof cur.how, "%.120s%s%.250s", how, refused[0] ? "; " : "", refused);
        cur.fallback = i > 0;
        cur.sgemm = cands[i].sgemm;
        return 0;
    }
    lr_err e = {0};
    if (switch_core(entry, &e)) /* the kernel in use stays what it was */
        fprintf(stderr, "lora-worker: warning: cannot switch OpenBLAS back to %s: %s\n", entry, e.msg);
    return lr_errf(err, "no sgemm kernel passed the self-test: %s", refused);
}

/* The automatic choice (see the header). */
static int pick_auto(lr_err *err) {
    static char want_name[48], loaded_name[48];
    kg_cpu c;
    kg_cpu_features(&c);
    const char *user = getenv("OPENBLAS_CORETYPE"), *want = core_for(&c);
    char how[200];
    kg_candidate cands[3];
    int n = 0;
    snprintf(loaded_name, sizeof loaded_name, "OpenBLAS %s", loaded_core);
    int wider = want && isa_rank(isa_of_core(want)) > isa_rank(isa_of_core(loaded_core));
    if (user && user[0] && wider) {
        snprintf(how, sizeof how, "OPENBLAS_CORETYPE=%.32s, set by the user (this CPU runs %s's %s kernels: unset it "
                 "to use them)", user, want, isa_of_core(want));
    } else if (user && user[0]) {
        snprintf(how, sizeof how, "OPENBLAS_CORETYPE=%.32s, set by the user", user);
    } else if (wider) {
        snprintf(how, sizeof how, "CPUID %s %s: %s kernels (OpenBLAS chose %s at load)", c.vendor,
                 cpu_avx512(&c) ? "avx512f/bw/dq/vl" : c.avx2 ? "avx2 fma" : "avx", isa_of_core(want), loaded_core);
        snprintf(want_name, sizeof want_name, "OpenBLAS %s", want);
        cands[n++] = (kg_candidate){want_name, want, ob_sgemm};
    } else {
        snprintf(how, sizeof how, "OpenBLAS's own choice at load (CPUID %s asks for nothing wider)", c.vendor);
    }
    cands[n++] = (kg_candidate){loaded_name, loaded_core, ob_sgemm};
    cands[n++] = (kg_candidate){"reference", NULL, kg_sgemm_ref};
    return kg_pick(cands, n, how, err);
}

static void init_once(void) {
    snprintf(loaded_core, sizeof loaded_core, "%s", openblas_get_corename());
    lr_err e = {0};
    if (pick_auto(&e)) { /* not even the reference passed: a broken build, keep it running and say so */
        fprintf(stderr, "lora-worker: warning: %s\n", e.msg);
        snprintf(cur.name, sizeof cur.name, "reference");
        snprintf(cur.isa, sizeof cur.isa, "scalar");
        snprintf(cur.how, sizeof cur.how, "%.255s", e.msg);
        cur.fallback = 1;
        cur.sgemm = kg_sgemm_ref;
    }
}

const kg_kernel *kg_current(void) {
    pthread_once(&once, init_once);
    return &cur;
}

void kg_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc) {
    kg_current()->sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

int kg_use(const char *name, lr_err *err) {
    kg_current();
    if (!strcmp(name, "auto")) return pick_auto(err);
    kg_candidate c;
    if (!strcmp(name, "reference"))
        c = (kg_candidate){"reference", NULL, kg_sgemm_ref};
    else if (!strcmp(name, "default"))
        c = (kg_candidate){loaded_core, loaded_core, ob_sgemm};
    else
        c = (kg_candidate){name, name, ob_sgemm};
    char how[96];
    snprintf(how, sizeof how, "requested (--kernel %.40s)", name);
    return kg_pick(&c, 1, how, err);
}

int kg_list(const char **names, int cap) {
    kg_cpu c;
    kg_cpu_features(&c);
    int avx512 = cpu_avx512(&c), avx2 = c.avx2 && c.fma;
    const struct {
        const char *core;
        int ok;
    } all[] = {{"default", 1},         {"SkylakeX", avx512}, {"Cooperlake", avx512 && c.avx512_bf16},
               {"Haswell", avx2},      {"Zen", avx2},        {"Sandybridge", c.avx}};
    int n = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0] && n < cap; i++)
        if (all[i].ok) names[n++] = all[i].core;
    return n;
}
