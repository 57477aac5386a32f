/* Compiled keyed transformers for pipelines.data.masking.
 *
 * Why: in a masked snapshot build, every distinct value of a masked column costs one Python
 * call of `_Keyed.digest` plus the formatting of its replacement (1.5-4 us a value). These are
 * the same transformers in C, byte for byte: HMAC-SHA256(key, purpose NUL value as UTF-8 with
 * surrogates passed through) and the same arithmetic on the digest. The SHA-256 is embedded (no
 * OpenSSL to link), so the module builds wherever a C compiler and the Python headers are.
 *
 * Each factory returns a `Transform`, a callable from str to str. When a value is one the C code
 * does not handle (a date that would be refused, a date written with non-ASCII digits, ...), the
 * transform calls the `fallback` it was given (the Python transformer, which gives the same
 * result or raises MaskingError), or returns None when it has none; so a refused value costs
 * one Python call and never a different output.
 *
 * The key is only ever held as two hashed pad states; nothing here prints it or puts it in an
 * error, and a Transform has no attributes to read it back from.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------------ SHA-256 */

typedef struct {
    uint32_t h[8];
    uint64_t length;      /* bytes hashed so far */
    uint8_t block[64];
    size_t used;          /* bytes waiting in block */
} sha256_ctx;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_portable(uint32_t h[8], const uint8_t *p, size_t blocks)
{
    while (blocks--) {
        uint32_t w[64], a, b, c, d, e, f, g, hh;
        int i;
        for (i = 0; i < 16; i++)
            w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16
                 | (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
        for (i = 16; i < 64; i++) {
            uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; hh = h[7];
        for (i = 0; i < 64; i++) {
            uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g))
                        + K[i] + w[i];
            uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
        p += 64;
    }
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(FASTMASK_PORTABLE)
/* The SHA extensions of x86 (SHA-NI): the same compression, several times faster. Used only when
 * the CPU says it has them (checked once at import). */
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHANI 1

static int cpu_has_shani(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 9)) || !(c & (1u << 19)))
        return 0;  /* SSSE3 and SSE4.1 */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b >> 29) & 1;  /* SHA */
}

__attribute__((target("sha,sse4.1,ssse3")))
static void sha256_shani(uint32_t h[8], const uint8_t *p, size_t blocks)
{
    const __m128i MASK = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i state0, state1, msg, tmp, msg0, msg1, msg2, msg3, abef_save, cdgh_save;

    tmp = _mm_loadu_si128((const __m128i *)&h[0]);     /* DCBA */
    state1 = _mm_loadu_si128((const __m128i *)&h[4]);  /* HGFE */
    tmp = _mm_shuffle_epi32(tmp, 0xB1);                 /* CDAB */
    state1 = _mm_shuffle_epi32(state1, 0x1B);           /* EFGH */
    state0 = _mm_alignr_epi8(tmp, state1, 8);           /* ABEF */
    state1 = _mm_blend_epi16(state1, tmp, 0xF0);        /* CDGH */

    while (blocks--) {
        abef_save = state0;
        cdgh_save = state1;

#define ROUNDS4(m, i)                                                                   \
        msg = _mm_add_epi32(m, _mm_loadu_si128((const __m128i *)&K[i]));                \
        state1 = _mm_sha256rnds2_epu32(state1, state0, msg);                            \
        msg = _mm_shuffle_epi32(msg, 0x0E);                                             \
        state0 = _mm_sha256rnds2_epu32(state0, state1, msg);

        msg0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 0)), MASK);
        ROUNDS4(msg0, 0)
        msg1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), MASK);
        ROUNDS4(msg1, 4)
        msg0 = _mm_sha256msg1_epu32(msg0, msg1);
        msg2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), MASK);
        ROUNDS4(msg2, 8)
        msg1 = _mm_sha256msg1_epu32(msg1, msg2);
        msg3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), MASK);

        /* rounds 12-63: each step finishes the schedule of the next four words */
#define STEP(a, b, c, d, i)                                                             \
        ROUNDS4(a, i)                                                                   \
        tmp = _mm_alignr_epi8(a, d, 4);                                                 \
        b = _mm_add_epi32(b, tmp);                                                      \
        b = _mm_sha256msg2_epu32(b, a);                                                 \
        d = _mm_sha256msg1_epu32(d, a);

        STEP(msg3, msg0, msg1, msg2, 12)
        STEP(msg0, msg1, msg2, msg3, 16)
        STEP(msg1, msg2, msg3, msg0, 20)
        STEP(msg2, msg3, msg0, msg1, 24)
        STEP(msg3, msg0, msg1, msg2, 28)
        STEP(msg0, msg1, msg2, msg3, 32)
        STEP(msg1, msg2, msg3, msg0, 36)
        STEP(msg2, msg3, msg0, msg1, 40)
        STEP(msg3, msg0, msg1, msg2, 44)
        STEP(msg0, msg1, msg2, msg3, 48)
        /* rounds 52-63: the last words need no further msg1 */
        ROUNDS4(msg1, 52)
        tmp = _mm_alignr_epi8(msg1, msg0, 4);
        msg2 = _mm_add_epi32(msg2, tmp);
        msg2 = _mm_sha256msg2_epu32(msg2, msg1);
        ROUNDS4(msg2, 56)
        tmp = _mm_alignr_epi8(msg2, msg1, 4);
        msg3 = _mm_add_epi32(msg3, tmp);
        msg3 = _mm_sha256msg2_epu32(msg3, msg2);
        ROUNDS4(msg3, 60)
#undef STEP
#undef ROUNDS4

        state0 = _mm_add_epi32(state0, abef_save);
        state1 = _mm_add_epi32(state1, cdgh_save);
        p += 64;
    }

    tmp = _mm_shuffle_epi32(state0, 0x1B);              /* FEBA */
    state1 = _mm_shuffle_epi32(state1, 0xB1);           /* DCHG */
    state0 = _mm_blend_epi16(tmp, state1, 0xF0);        /* DCBA */
    state1 = _mm_alignr_epi8(state1, tmp, 8);           /* ABEF */
    _mm_storeu_si128((__m128i *)&h[0], state0);
    _mm_storeu_si128((__m128i *)&h[4], state1);
}
#endif

static void (*sha256_blocks)(uint32_t h[8], const uint8_t *p, size_t blocks) = sha256_portable;

static void sha256_init(sha256_ctx *c)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof iv);
    c->length = 0;
    c->used = 0;
}

static void sha256_update(sha256_ctx *c, const uint8_t *p, size_t n)
{
    c->length += n;
    if (c->used) {
        size_t take = 64 - c->used < n ? 64 - c->used : n;
        memcpy(c->block + c->used, p, take);
        c->used += take;
        p += take;
        n -= take;
        if (c->used < 64)
            return;
        sha256_blocks(c->h, c->block, 1);
        c->used = 0;
    }
    if (n >= 64) {
        sha256_blocks(c->h, p, n / 64);
        p += n - n % 64;
        n %= 64;
    }
    memcpy(c->block, p, n);
    c->used = n;
}

static void sha256_final(sha256_ctx *c, uint8_t out[32])
{
    uint64_t bits = c->length * 8;
    int i;
    c->block[c->used++] = 0x80;
    if (c->used > 56) {
        memset(c->block + c->used, 0, 64 - c->used);
        sha256_blocks(c->h, c->block, 1);
        c->used = 0;
    }
    memset(c->block + c->used, 0, 56 - c->used);
    for (i = 0; i < 8; i++)
        c->block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_blocks(c->h, c->block, 1);
    for (i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(c->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)c->h[i];
    }
}

/* ------------------------------------------------------------------------------ keyed hashing */

typedef struct {
    sha256_ctx inner;  /* after the key's inner pad, the purpose and its NUL */
    sha256_ctx outer;  /* after the key's outer pad */
} keyed_t;

static void keyed_init(keyed_t *k, const uint8_t *key, size_t keylen, const char *purpose)
{
    uint8_t pad[64], hashed[32];
    size_t i;
    if (keylen > 64) {
        sha256_ctx c;
        sha256_init(&c);
        sha256_update(&c, key, keylen);
        sha256_final(&c, hashed);
        key = hashed;
        keylen = 32;
    }
    for (i = 0; i < 64; i++)
        pad[i] = (uint8_t)((i < keylen ? key[i] : 0) ^ 0x36);
    sha256_init(&k->inner);
    sha256_update(&k->inner, pad, 64);
    sha256_update(&k->inner, (const uint8_t *)purpose, strlen(purpose) + 1);  /* with its NUL */
    for (i = 0; i < 64; i++)
        pad[i] = (uint8_t)((i < keylen ? key[i] : 0) ^ 0x5C);
    sha256_init(&k->outer);
    sha256_update(&k->outer, pad, 64);
    memset(pad, 0, sizeof pad);
    memset(hashed, 0, sizeof hashed);
}

static void keyed_bytes(const keyed_t *k, const uint8_t *p, size_t n, uint8_t out[32])
{
    sha256_ctx c = k->inner;
    uint8_t inner[32];
    sha256_update(&c, p, n);
    sha256_final(&c, inner);
    c = k->outer;
    sha256_update(&c, inner, 32);
    sha256_final(&c, out);
}

/* The HMAC of a str's UTF-8 form, surrogates encoded as three bytes each (what Python's
 * 'surrogatepass' error handler does), without making a bytes object. */
static void keyed_str(const keyed_t *k, PyObject *s, uint8_t out[32])
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s), i;
    sha256_ctx c;
    uint8_t inner[32], buf[256];
    size_t used = 0;
    int kind;
    const void *data;

    if (PyUnicode_IS_ASCII(s)) {
        keyed_bytes(k, (const uint8_t *)PyUnicode_DATA(s), (size_t)n, out);
        return;
    }
    kind = PyUnicode_KIND(s);
    data = PyUnicode_DATA(s);
    c = k->inner;
    for (i = 0; i < n; i++) {
        Py_UCS4 ch = PyUnicode_READ(kind, data, i);
        if (used > sizeof buf - 4) {
            sha256_update(&c, buf, used);
            used = 0;
        }
        if (ch < 0x80) {
            buf[used++] = (uint8_t)ch;
        } else if (ch < 0x800) {
            buf[used++] = (uint8_t)(0xC0 | (ch >> 6));
            buf[used++] = (uint8_t)(0x80 | (ch & 0x3F));
        } else if (ch < 0x10000) {
            buf[used++] = (uint8_t)(0xE0 | (ch >> 12));
            buf[used++] = (uint8_t)(0x80 | ((ch >> 6) & 0x3F));
            buf[used++] = (uint8_t)(0x80 | (ch & 0x3F));
        } else {
            buf[used++] = (uint8_t)(0xF0 | (ch >> 18));
            buf[used++] = (uint8_t)(0x80 | ((ch >> 12) & 0x3F));
            buf[used++] = (uint8_t)(0x80 | ((ch >> 6) & 0x3F));
            buf[used++] = (uint8_t)(0x80 | (ch & 0x3F));
        }
    }
    sha256_update(&c, buf, used);
    sha256_final(&c, inner);
    c = k->outer;
    sha256_update(&c, inner, 32);
    sha256_final(&c, out);
}

/* `_more`: SHA-256(digest + counter as 4 big-endian bytes), to expand a digest. */
static void more(const uint8_t digest[32], uint32_t counter, uint8_t out[32])
{
    sha256_ctx c;
    uint8_t ctr[4] = {(uint8_t)(counter >> 24), (uint8_t)(counter >> 16),
                      (uint8_t)(counter >> 8), (uint8_t)counter};
    sha256_init(&c);
    sha256_update(&c, digest, 32);
    sha256_update(&c, ctr, 4);
    sha256_final(&c, out);
}

static const char HEX[] = "0123456789abcdef";

/* `_hex`: `count` hex characters, the digest's then its expansion's. */
static void hex_chars(const uint8_t digest[32], size_t count, char *out)
{
    uint8_t block[32];
    const uint8_t *src = digest;
    uint32_t counter = 0;
    size_t done = 0, i;
    while (done < count) {
        for (i = 0; i < 32 && done < count; i++) {
            out[done++] = HEX[src[i] >> 4];
            if (done < count)
                out[done++] = HEX[src[i] & 15];
        }
        if (done < count) {
            more(digest, ++counter, block);
            src = block;
        }
    }
}

/* `_digits`: `count` decimal digits, from the bytes below 250 (the six above are skipped, so
 * every digit is equally likely), the digest's then its expansion's. */
static void digit_chars(const uint8_t digest[32], size_t count, char *out)
{
    uint8_t block[32];
    const uint8_t *src = digest;
    uint32_t counter = 0;
    size_t done = 0, i;
    while (done < count) {
        for (i = 0; i < 32 && done < count; i++)
            if (src[i] < 250)
                out[done++] = (char)('0' + src[i] % 10);
        if (done < count) {
            more(digest, ++counter, block);
            src = block;
        }
    }
}

/* ------------------------------------------------------------------------------ big numbers */

/* A digest read as one big-endian number, in 32-bit limbs, most significant first. */
typedef struct {
    uint32_t limb[8];
    int n;
} bignum;

static void big_from(bignum *b, const uint8_t *p, int bytes)
{
    int i;
    b->n = bytes / 4;
    for (i = 0; i < b->n; i++)
        b->limb[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16
                   | (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
}

/* b //= d in place; returns b % d (d from 1 to 2**32 - 1). */
static uint32_t big_divmod(bignum *b, uint32_t d)
{
    uint64_t rem = 0;
    int i;
    for (i = 0; i < b->n; i++) {
        uint64_t cur = rem << 32 | b->limb[i];
        b->limb[i] = (uint32_t)(cur / d);
        rem = cur % d;
    }
    return (uint32_t)rem;
}

/* b % d, b unchanged. */
static uint32_t big_mod(const bignum *b, uint32_t d)
{
    uint64_t rem = 0;
    int i;
    for (i = 0; i < b->n; i++)
        rem = (rem << 32 | b->limb[i]) % d;
    return (uint32_t)rem;
}

/* ------------------------------------------------------------------------------ output */

/* A piece of text kept as UTF-8 (for the output buffer) with whether it is ASCII. */
typedef struct {
    const char *utf8;
    Py_ssize_t len;
    int ascii;
} text_t;

static int text_of(PyObject *s, text_t *t)
{
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "expected str");
        return -1;
    }
    t->utf8 = PyUnicode_AsUTF8AndSize(s, &t->len);  /* kept alive by the owning tuple */
    if (t->utf8 == NULL)
        return -1;
    t->ascii = PyUnicode_IS_ASCII(s);
    return 0;
}

/* A growable output buffer, on the stack for the usual short values. */
typedef struct {
    char *p;
    size_t len, cap;
    int ascii;
    char local[512];
} out_t;

static void out_init(out_t *o)
{
    o->p = o->local;
    o->len = 0;
    o->cap = sizeof o->local;
    o->ascii = 1;
}

static int out_reserve(out_t *o, size_t more_bytes)
{
    size_t cap;
    char *p;
    if (o->len + more_bytes <= o->cap)
        return 0;
    cap = (o->len + more_bytes) * 2;
    if (o->p == o->local) {
        p = PyMem_Malloc(cap);
        if (p)
            memcpy(p, o->local, o->len);
    } else {
        p = PyMem_Realloc(o->p, cap);
    }
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    o->p = p;
    o->cap = cap;
    return 0;
}

static int out_add(out_t *o, const char *p, size_t n)
{
    if (out_reserve(o, n) < 0)
        return -1;
    memcpy(o->p + o->len, p, n);
    o->len += n;
    return 0;
}

static int out_text(out_t *o, const text_t *t)
{
    o->ascii &= t->ascii;
    return out_add(o, t->utf8, (size_t)t->len);
}

static PyObject *out_finish(out_t *o)
{
    PyObject *r;
    if (o->ascii) {
        r = PyUnicode_New((Py_ssize_t)o->len, 127);
        if (r)
            memcpy(PyUnicode_DATA(r), o->p, o->len);
    } else {
        r = PyUnicode_DecodeUTF8(o->p, (Py_ssize_t)o->len, "strict");
    }
    if (o->p != o->local)
        PyMem_Free(o->p);
    return r;
}

static void out_drop(out_t *o)
{
    if (o->p != o->local)
        PyMem_Free(o->p);
}

/* ------------------------------------------------------------------------------ Transform */

enum kind { K_HASH, K_EMAIL, K_FIRST, K_LAST, K_FULL, K_ADDRESS, K_TEMPLATE, K_PHONE, K_DATE };

static const char *const KIND_NAMES[] = {"hash", "email", "first_name", "last_name", "full_name",
                                         "address", "template", "phone", "date_shift"};

/* A template part: a literal, then a field of `width` characters (0 when there is none). */
typedef struct {
    text_t literal;
    int field;  /* 0 none, 1 hash, 2 digits */
    size_t width;
} part_t;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    enum kind kind;
    keyed_t keyed;
    PyObject *fallback;  /* called for values this code does not handle; may be NULL */
    PyObject *owned;     /* a tuple keeping alive what the text_t point into */
    text_t *words[3];    /* email: first, last, domains; names: first, last; address: streets */
    uint32_t nwords[3];
    part_t *parts;       /* template */
    Py_ssize_t nparts;
    size_t hex_width, digit_width;
    long param;          /* hash: length; phone: keep_prefix (-1 for none); date_shift: days */
} Transform;

static PyTypeObject TransformType;

static void free_tables(Transform *t)
{
    int i;
    for (i = 0; i < 3; i++) {
        PyMem_Free(t->words[i]);
        t->words[i] = NULL;
    }
    PyMem_Free(t->parts);
    t->parts = NULL;
}

static int transform_traverse(Transform *t, visitproc visit, void *arg)
{
    Py_VISIT(t->fallback);
    Py_VISIT(t->owned);
    return 0;
}

static int transform_clear(Transform *t)
{
    Py_CLEAR(t->fallback);
    Py_CLEAR(t->owned);
    return 0;
}

static void transform_dealloc(Transform *t)
{
    PyObject_GC_UnTrack(t);
    transform_clear(t);
    free_tables(t);
    memset(&t->keyed, 0, sizeof t->keyed);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *transform_repr(Transform *t)
{
    return PyUnicode_FromFormat("<compiled %s transform>", KIND_NAMES[t->kind]);
}

/* -- the transformers: each returns a new str, Py_None (new reference) when it does not handle
 * the value, or NULL with an exception set. */

static PyObject *do_hash(Transform *t, PyObject *value)
{
    uint8_t d[32];
    char hex[64];
    PyObject *r;
    keyed_str(&t->keyed, value, d);
    hex_chars(d, (size_t)t->param, hex);
    r = PyUnicode_New(t->param, 127);
    if (r)
        memcpy(PyUnicode_DATA(r), hex, (size_t)t->param);
    return r;
}

static PyObject *do_email(Transform *t, PyObject *value)
{
    uint8_t d[32];
    bignum n;
    uint32_t f, la, hi, lo, dom;
    char number[13];
    int i;
    out_t o;

    keyed_str(&t->keyed, value, d);
    big_from(&n, d, 16);  /* 128 bits: plenty */
    f = big_divmod(&n, t->nwords[0]);
    la = big_divmod(&n, t->nwords[1]);
    lo = big_divmod(&n, 1000000);  /* n % 10**12 as two halves of six digits */
    hi = big_divmod(&n, 1000000);
    dom = big_mod(&n, t->nwords[2]);
    for (i = 5; i >= 0; i--, hi /= 10)
        number[i] = (char)('0' + hi % 10);
    for (i = 11; i >= 6; i--, lo /= 10)
        number[i] = (char)('0' + lo % 10);
    out_init(&o);
    if (out_text(&o, &t->words[0][f]) < 0 || out_add(&o, ".", 1) < 0
            || out_text(&o, &t->words[1][la]) < 0 || out_add(&o, "+", 1) < 0
            || out_add(&o, number, 12) < 0 || out_add(&o, "@", 1) < 0
            || out_text(&o, &t->words[2][dom]) < 0) {
        out_drop(&o);
        return NULL;
    }
    return out_finish(&o);
}

static PyObject *do_names(Transform *t, PyObject *value)
{
    uint8_t d[32];
    bignum n;
    out_t o;
    int rc;

    keyed_str(&t->keyed, value, d);
    big_from(&n, d, 32);
    out_init(&o);
    if (t->kind == K_FIRST || t->kind == K_LAST) {
        rc = out_text(&o, &t->words[0][big_mod(&n, t->nwords[0])]);
    } else if (t->kind == K_FULL) {
        uint32_t f = big_divmod(&n, t->nwords[0]);
        rc = out_text(&o, &t->words[0][f]);
        if (rc == 0)
            rc = out_add(&o, " ", 1);
        if (rc == 0)
            rc = out_text(&o, &t->words[1][big_mod(&n, t->nwords[1])]);
    } else {  /* address: "{1 + (n // ns) % 9999} {streets[n % ns]}" */
        uint32_t s = big_divmod(&n, t->nwords[0]);
        char num[8];
        int len = snprintf(num, sizeof num, "%u ", 1 + big_mod(&n, 9999));
        rc = out_add(&o, num, (size_t)len);
        if (rc == 0)
            rc = out_text(&o, &t->words[0][s]);
    }
    if (rc < 0) {
        out_drop(&o);
        return NULL;
    }
    return out_finish(&o);
}

static PyObject *do_template(Transform *t, PyObject *value)
{
    uint8_t d[32];
    char *hexes, *digits, stack[256];
    size_t h = 0, g = 0, need = t->hex_width + t->digit_width;
    Py_ssize_t i;
    out_t o;
    PyObject *r = NULL;

    keyed_str(&t->keyed, value, d);
    hexes = need <= sizeof stack ? stack : PyMem_Malloc(need);
    if (!hexes)
        return PyErr_NoMemory();
    digits = hexes + t->hex_width;
    hex_chars(d, t->hex_width, hexes);
    digit_chars(d, t->digit_width, digits);
    out_init(&o);
    for (i = 0; i < t->nparts; i++) {
        const part_t *p = &t->parts[i];
        if (out_text(&o, &p->literal) < 0)
            goto fail;
        if (p->field == 1) {
            if (out_add(&o, hexes + h, p->width) < 0)
                goto fail;
            h += p->width;
        } else if (p->field == 2) {
            if (out_add(&o, digits + g, p->width) < 0)
                goto fail;
            g += p->width;
        }
    }
    r = out_finish(&o);
    goto done;
fail:
    out_drop(&o);
done:
    if (hexes != stack)
        PyMem_Free(hexes);
    return r;
}

/* ITU-T E.164 two-digit country codes (`_TWO_DIGIT_CODES` in masking.py), as a table by the
 * code's value. */
static const uint8_t TWO_DIGIT[100] = {
    [20] = 1, [27] = 1, [30] = 1, [31] = 1, [32] = 1, [33] = 1, [34] = 1, [36] = 1, [39] = 1,
    [40] = 1, [41] = 1, [43] = 1, [44] = 1, [45] = 1, [46] = 1, [47] = 1, [48] = 1, [49] = 1,
    [51] = 1, [52] = 1, [53] = 1, [54] = 1, [55] = 1, [56] = 1, [57] = 1, [58] = 1, [60] = 1,
    [61] = 1, [62] = 1, [63] = 1, [64] = 1, [65] = 1, [66] = 1, [81] = 1, [82] = 1, [84] = 1,
    [86] = 1, [90] = 1, [91] = 1, [92] = 1, [93] = 1, [94] = 1, [95] = 1, [98] = 1,
};

static Py_ssize_t country_code_length(const char *digits, Py_ssize_t n)
{
    if (n >= 1 && (digits[0] == '1' || digits[0] == '7'))
        return 1;
    if (n >= 2 && TWO_DIGIT[(digits[0] - '0') * 10 + (digits[1] - '0')])
        return 2;
    return 3;
}

#define IS_DIGIT(c) ((c) >= '0' && (c) <= '9')

static PyObject *do_phone(Transform *t, PyObject *value)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(value), i, count = 0, lead, area, kept, end, j;
    int kind = PyUnicode_KIND(value), nanp = 0, in_run = 0, plus = 0;
    const void *data = PyUnicode_DATA(value);
    char stack[256], *digits, *fresh;
    uint8_t d[32];
    PyObject *r = NULL;
    void *rdata;

    for (i = 0; i < len; i++)
        if (IS_DIGIT(PyUnicode_READ(kind, data, i)))
            count++;
    if (count == 0)
        return Py_NewRef(value);
    digits = (size_t)count * 2 <= sizeof stack ? stack : PyMem_Malloc((size_t)count * 2);
    if (!digits)
        return PyErr_NoMemory();
    fresh = digits + count;
    for (i = 0, j = 0; i < len; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (IS_DIGIT(c))
            digits[j++] = (char)c;
    }
    for (i = 0; i < len; i++) {  /* value.lstrip().startswith("+") */
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (!Py_UNICODE_ISSPACE(c)) {
            plus = c == '+';
            break;
        }
    }
    if (plus)
        lead = country_code_length(digits, count);
    else if (count > 9 && digits[0] == '0' && digits[1] == '0')
        lead = 2 + country_code_length(digits + 2, count - 2);
    else if (digits[0] == '0')
        lead = 1;
    else
        lead = 0;
    if (t->param >= 0) {
        area = t->param;
    } else {
        nanp = (lead == 1 && digits[0] == '1')
            || (lead == 0 && count == 10 && digits[0] != '0' && digits[0] != '1');
        /* the end of the digit group the national number starts in */
        end = 0;
        for (i = 0; i < len; i++) {
            int digit = IS_DIGIT(PyUnicode_READ(kind, data, i));
            if (digit)
                end++;
            if (in_run && !digit && end > lead)
                break;
            in_run = digit;
        }
        if (end >= count)  /* no group after the prefix: a guess */
            area = nanp ? 3 : 2;
        else
            area = end - lead;
    }
    kept = lead + area;
    if (kept > count - 4)  /* MIN_CHANGED_DIGITS */
        kept = count - 4 > 0 ? count - 4 : 0;
    keyed_bytes(&t->keyed, (const uint8_t *)digits + (lead < count ? lead : count),
                (size_t)(lead < count ? count - lead : 0), d);
    digit_chars(d, (size_t)(count - kept), fresh + kept);
    if (nanp && kept == lead + area && area == 3)  /* an exchange code is 2-9 */
        fresh[kept] = "23456789"[(fresh[kept] - '0') % 8];
    memcpy(fresh, digits, (size_t)kept);
    r = PyUnicode_New(len, PyUnicode_MAX_CHAR_VALUE(value));
    if (r) {
        rdata = PyUnicode_DATA(r);
        memcpy(rdata, data, (size_t)len * (size_t)kind);
        for (i = 0, j = 0; i < len; i++)
            if (IS_DIGIT(PyUnicode_READ(kind, data, i)))
                PyUnicode_WRITE(kind, rdata, i, (Py_UCS4)fresh[j++]);
    }
    if (digits != stack)
        PyMem_Free(digits);
    return r;
}

/* Days from 0001-01-01 (day 1, as `date.toordinal`), proleptic Gregorian. */
static long to_ordinal(long y, long m, long d)
{
    static const int before[13] = {0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334};
    long y1 = y - 1;
    long days = y1 * 365 + y1 / 4 - y1 / 100 + y1 / 400 + before[m] + d;
    if (m > 2 && (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
        days++;
    return days;
}

static int days_in_month(long y, long m)
{
    static const int dim[13] = {0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
        return 29;
    return dim[m];
}

static void from_ordinal(long n, long *y, long *m, long *d)
{
    /* Howard Hinnant's civil_from_days, shifted: ordinal 1 is 0001-01-01. */
    long z = n - 1 - 719162 + 719468;  /* days since 0000-03-01 */
    long era = z / 146097;             /* z > 0 for every valid ordinal */
    long doe = z - era * 146097;
    long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = yoe + era * 400 + (*m <= 2);
}

#define MAX_ORDINAL 3652059L  /* date(9999, 12, 31).toordinal() */

static PyObject *do_date(Transform *t, PyObject *value)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(value), i = 0, end;
    int kind = PyUnicode_KIND(value);
    const void *data = PyUnicode_DATA(value);
    long y = 0, m, dd, ordinal, delta;
    Py_UCS4 c;
    uint64_t n;
    uint8_t dg[32];
    char head[64];
    PyObject *r;
    void *rdata;

    /* _DATE: (\d{4,})-(\d\d)-(\d\d)(?=$|[ T]). A non-ASCII character where a digit may stand
     * could be a digit to Python (\d is Unicode); that is for the fallback to decide. */
    for (; i < len; i++) {
        c = PyUnicode_READ(kind, data, i);
        if (c >= 0x80)
            return Py_NewRef(Py_None);
        if (!IS_DIGIT(c))
            break;
        if (i >= (Py_ssize_t)sizeof head - 8)
            return Py_NewRef(Py_None);
        y = y * 10 + (long)(c - '0');
        if (y > 9999)
            y = 10000;  /* out of range whatever follows */
    }
    if (i < 4 || i + 6 > len)
        return Py_NewRef(Py_None);
    for (end = i; end < i + 6; end++) {
        c = PyUnicode_READ(kind, data, end);
        if (c >= 0x80 || ((end == i || end == i + 3) ? c != '-' : !IS_DIGIT(c)))
            return Py_NewRef(Py_None);
    }
    if (end < len) {
        c = PyUnicode_READ(kind, data, end);
        if (!(c == ' ' || c == 'T' || (c == '\n' && end == len - 1)))
            return Py_NewRef(Py_None);
    }
    if (len >= 3 && PyUnicode_READ(kind, data, len - 3) == ' '
            && PyUnicode_READ(kind, data, len - 2) == 'B'
            && PyUnicode_READ(kind, data, len - 1) == 'C')
        return Py_NewRef(Py_None);
    m = (long)(PyUnicode_READ(kind, data, i + 1) - '0') * 10
        + (long)(PyUnicode_READ(kind, data, i + 2) - '0');
    dd = (long)(PyUnicode_READ(kind, data, i + 4) - '0') * 10
        + (long)(PyUnicode_READ(kind, data, i + 5) - '0');
    if (y < 1 || y > 9999 || m < 1 || m > 12 || dd < 1 || dd > days_in_month(y, m))
        return Py_NewRef(Py_None);
    for (i = 0; i < end; i++)  /* ASCII, checked above */
        head[i] = (char)PyUnicode_READ(kind, data, i);
    keyed_bytes(&t->keyed, (const uint8_t *)head, (size_t)end, dg);
    n = 0;
    for (i = 0; i < 8; i++)
        n = n << 8 | dg[i];
    delta = (long)(1 + (n >> 1) % (uint64_t)t->param);
    if (n & 1)
        delta = -delta;
    ordinal = to_ordinal(y, m, dd) + delta;
    if (ordinal < 1 || ordinal > MAX_ORDINAL)
        return Py_NewRef(Py_None);
    from_ordinal(ordinal, &y, &m, &dd);
    snprintf(head, sizeof head, "%04ld-%02ld-%02ld", y, m, dd);
    /* the rest keeps its characters, so the result has the value's kind */
    r = PyUnicode_New(10 + (len - end), PyUnicode_MAX_CHAR_VALUE(value));
    if (!r)
        return NULL;
    rdata = PyUnicode_DATA(r);
    for (i = 0; i < 10; i++)
        PyUnicode_WRITE(kind, rdata, i, (Py_UCS4)head[i]);
    memcpy((char *)rdata + 10 * kind, (const char *)data + end * kind,
           (size_t)(len - end) * (size_t)kind);
    return r;
}

static PyObject *do_infinite(PyObject *value)
{
    if (PyUnicode_CompareWithASCIIString(value, "infinity") == 0
            || PyUnicode_CompareWithASCIIString(value, "-infinity") == 0)
        return Py_NewRef(value);
    return Py_NewRef(Py_None);
}

static PyObject *transform_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                      PyObject *kwnames)
{
    Transform *t = (Transform *)self;
    PyObject *value, *r;

    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "a transform takes one str");
        return NULL;
    }
    value = args[0];
    if (!PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "a transform takes one str");
        return NULL;
    }
    switch (t->kind) {
    case K_HASH: r = do_hash(t, value); break;
    case K_EMAIL: r = do_email(t, value); break;
    case K_FIRST: case K_LAST: case K_FULL: case K_ADDRESS: r = do_names(t, value); break;
    case K_TEMPLATE: r = do_template(t, value); break;
    case K_PHONE: r = do_phone(t, value); break;
    case K_DATE:
        r = do_date(t, value);
        if (r == Py_None) {
            Py_DECREF(r);
            r = do_infinite(value);
        }
        break;
    default: r = Py_NewRef(Py_None);
    }
    if (r == Py_None && t->fallback) {
        Py_DECREF(r);
        return PyObject_CallOneArg(t->fallback, value);
    }
    return r;
}

static PyTypeObject TransformType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pipelines.data._fastmask.Transform",
    .tp_doc = PyDoc_STR("A compiled keyed transformer: str -> str (None when it does not "
                        "handle the value and has no fallback)."),
    .tp_basicsize = sizeof(Transform),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Transform, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)transform_dealloc,
    .tp_traverse = (traverseproc)transform_traverse,
    .tp_clear = (inquiry)transform_clear,
    .tp_repr = (reprfunc)transform_repr,
};

/* ------------------------------------------------------------------------------ factories */

static Transform *new_transform(enum kind kind, Py_buffer *key, PyObject *fallback)
{
    Transform *t;
    if (key->len == 0) {
        PyErr_SetString(PyExc_ValueError, "the masking key is empty");
        return NULL;
    }
    if (fallback == Py_None)
        fallback = NULL;
    if (fallback && !PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "fallback must be callable");
        return NULL;
    }
    t = PyObject_GC_New(Transform, &TransformType);
    if (!t)
        return NULL;
    t->vectorcall = transform_vectorcall;
    t->kind = kind;
    t->fallback = Py_XNewRef(fallback);
    t->owned = PyTuple_New(0);
    memset(t->words, 0, sizeof t->words);
    memset(t->nwords, 0, sizeof t->nwords);
    t->parts = NULL;
    t->nparts = 0;
    t->hex_width = t->digit_width = 0;
    t->param = 0;
    keyed_init(&t->keyed, (const uint8_t *)key->buf, (size_t)key->len, KIND_NAMES[kind]);
    PyObject_GC_Track(t);
    if (!t->owned) {
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

/* Keep `obj` alive as long as `t` (the text_t of its strings point into them). */
static int own(Transform *t, PyObject *obj)
{
    Py_ssize_t n = PyTuple_GET_SIZE(t->owned);
    PyObject *bigger = PyTuple_New(n + 1);
    Py_ssize_t i;
    if (!bigger)
        return -1;
    for (i = 0; i < n; i++)
        PyTuple_SET_ITEM(bigger, i, Py_NewRef(PyTuple_GET_ITEM(t->owned, i)));
    PyTuple_SET_ITEM(bigger, n, Py_NewRef(obj));
    Py_SETREF(t->owned, bigger);
    return 0;
}

/* A word list (a sequence of str, not empty, fewer than 2**32) as table `slot` of `t`. */
static int set_words(Transform *t, int slot, PyObject *words)
{
    PyObject *tuple = PySequence_Tuple(words);
    Py_ssize_t n, i;
    if (!tuple)
        return -1;
    if (own(t, tuple) < 0) {
        Py_DECREF(tuple);
        return -1;
    }
    Py_DECREF(tuple);
    n = PyTuple_GET_SIZE(tuple);
    if (n == 0 || (uint64_t)n > 0xFFFFFFFFu) {
        PyErr_SetString(PyExc_ValueError, "a word list must have 1 to 2**32 - 1 words");
        return -1;
    }
    t->words[slot] = PyMem_Calloc((size_t)n, sizeof(text_t));
    if (!t->words[slot]) {
        PyErr_NoMemory();
        return -1;
    }
    t->nwords[slot] = (uint32_t)n;
    for (i = 0; i < n; i++)
        if (text_of(PyTuple_GET_ITEM(tuple, i), &t->words[slot][i]) < 0)
            return -1;
    return 0;
}

static PyObject *fm_hash(PyObject *Py_UNUSED(mod), PyObject *args, PyObject *kw)
{
    static char *names[] = {"key", "length", "fallback", NULL};
    Py_buffer key;
    long length;
    PyObject *fallback = NULL;
    Transform *t;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*l|$O", names, &key, &length, &fallback))
        return NULL;
    if (length < 1 || length > 64) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "length must be from 1 to 64");
        return NULL;
    }
    t = new_transform(K_HASH, &key, fallback);
    PyBuffer_Release(&key);
    if (t)
        t->param = length;
    return (PyObject *)t;
}

static PyObject *fm_email(PyObject *Py_UNUSED(mod), PyObject *args, PyObject *kw)
{
    static char *names[] = {"key", "first", "last", "domains", "fallback", NULL};
    Py_buffer key;
    PyObject *first, *last, *domains, *fallback = NULL;
    Transform *t;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*OOO|$O", names, &key, &first, &last,
                                     &domains, &fallback))
        return NULL;
    t = new_transform(K_EMAIL, &key, fallback);
    PyBuffer_Release(&key);
    if (t && (set_words(t, 0, first) < 0 || set_words(t, 1, last) < 0
              || set_words(t, 2, domains) < 0))
        Py_CLEAR(t);
    return (PyObject *)t;
}

static PyObject *fm_names(PyObject *Py_UNUSED(mod), PyObject *args, PyObject *kw)
{
    static char *names[] = {"key", "kind", "first", "last", "fallback", NULL};
    Py_buffer key;
    const char *kindname;
    PyObject *first, *last, *fallback = NULL;
    enum kind kind;
    Transform *t;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*sOO|$O", names, &key, &kindname, &first,
                                     &last, &fallback))
        return NULL;
    if (strcmp(kindname, "first_name") == 0)
        kind = K_FIRST;
    else if (strcmp(kindname, "last_name") == 0)
        kind = K_LAST;
    else if (strcmp(kindname, "full_name") == 0)
        kind = K_FULL;
    else {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "kind must be first_name, last_name or full_name");
        return NULL;
    }
    t = new_transform(kind, &key, fallback);
    PyBuffer_Release(&key);
    if (t && (set_words(t, 0, kind == K_LAST ? last : first) < 0
              || (kind == K_FULL && set_words(t, 1, last) < 0)))
        Py_CLEAR(t);
    return (PyObject *)t;
}

static PyObject *fm_address(PyObject *Py_UNUSED(mod), PyObject *args, PyObject *kw)
{
    static char *names[] = {"key", "streets", "fallback", NULL};
    Py_buffer key;
    PyObject *streets, *fallback = NULL;
    Transform *t;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*O|$O", names, &key, &streets, &fallback))
        return NULL;
    t = new_transform(K_ADDRESS, &key, fallback);
    PyBuffer_Release(&key);
    if (t && set_words(t, 0, streets) < 0)
        Py_CLEAR(t);
    return (PyObject *)t;
}

static PyObject *fm_template(PyObject *Py_UNUSED(mod), PyObject *args, PyObject *kw)
{
    static char *names[] = {"key", "parts", "fallback", NULL};
    Py_buffer key;
    PyObject *parts, *tuple, *fallback = NULL;
    Transform *t;
    Py_ssize_t i;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*O|$O", names, &key, &parts, &fallback))
        return NULL;
    t = new_transform(K_TEMPLATE, &key, fallback);
    PyBuffer_Release(&key);
    if (!t)
        return NULL;
    tuple = PySequence_Tuple(parts);
    if (!tuple || own(t, tuple) < 0)
        goto fail;
    Py_DECREF(tuple);
    t->nparts = PyTuple_GET_SIZE(tuple);
    t->parts = PyMem_Calloc((size_t)t->nparts + 1, sizeof(part_t));
    if (!t->parts) {
        PyErr_NoMemory();
        goto fail_owned;
    }
    for (i = 0; i < t->nparts; i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i), *field;
        long width;
        part_t *p = &t->parts[i];
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "a template part is (literal, field, width)");
            goto fail_owned;
        }
        if (text_of(PyTuple_GET_ITEM(item, 0), &p->literal) < 0)
            goto fail_owned;
        field = PyTuple_GET_ITEM(item, 1);
        width = PyLong_AsLong(PyTuple_GET_ITEM(item, 2));
        if (width == -1 && PyErr_Occurred())
            goto fail_owned;
        if (field == Py_None) {
            p->field = 0;
            continue;
        }
        if (!PyUnicode_Check(field) || width < 1 || width > 4096) {
            PyErr_SetString(PyExc_ValueError, "a template field is hash or digits, 1 to 4096 wide");
            goto fail_owned;
        }
        if (PyUnicode_CompareWithASCIIString(field, "hash") == 0)
            p->field = 1, t->hex_width += (size_t)width;
        else if (PyUnicode_CompareWithASCIIString(field, "digits") == 0)
            p->field = 2, t->digit_width += (size_t)width;
        else {
            PyErr_SetString(PyExc_ValueError, "a template field is hash or digits");
            goto fail_owned;
        }
        p->width = (size_t)width;
    }
    return (PyObject *)t;
fail:
    Py_XDECREF(tuple);
fail_owned:
    Py_DECREF(t);
    return NULL;
}

static PyObject *fm_phone(PyObject *Py_UNUSED(mod), PyObject *args, PyObject *kw)
{
    static char *names[] = {"key", "keep_prefix", "fallback", NULL};
    Py_buffer key;
    PyObject *keep = Py_None, *fallback = NULL;
    long prefix = -1;
    Transform *t;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|O$O", names, &key, &keep, &fallback))
        return NULL;
    if (keep != Py_None) {
        prefix = PyLong_AsLong(keep);
        if ((prefix == -1 && PyErr_Occurred()) || prefix < 0 || prefix > 64) {
            PyBuffer_Release(&key);
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "keep_prefix must be None or from 0 to 64");
            return NULL;
        }
    }
    t = new_transform(K_PHONE, &key, fallback);
    PyBuffer_Release(&key);
    if (t)
        t->param = prefix;
    return (PyObject *)t;
}

static PyObject *fm_date_shift(PyObject *Py_UNUSED(mod), PyObject *args, PyObject *kw)
{
    static char *names[] = {"key", "days", "fallback", NULL};
    Py_buffer key;
    long days;
    PyObject *fallback = NULL;
    Transform *t;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*l|$O", names, &key, &days, &fallback))
        return NULL;
    if (days < 1 || days > 3652059L) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "days must be from 1 to 3652059");
        return NULL;
    }
    t = new_transform(K_DATE, &key, fallback);
    PyBuffer_Release(&key);
    if (t)
        t->param = days;
    return (PyObject *)t;
}

/* sha256(data, portable=False): for the tests, which check each compression against hashlib
 * (the portable one is what runs on CPUs without SHA-NI). */
static PyObject *fm_sha256(PyObject *Py_UNUSED(mod), PyObject *args, PyObject *kw)
{
    static char *names[] = {"data", "portable", NULL};
    Py_buffer b;
    int portable = 0;
    sha256_ctx c;
    uint8_t out[32];
    void (*saved)(uint32_t h[8], const uint8_t *p, size_t blocks) = sha256_blocks;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|p", names, &b, &portable))
        return NULL;
    if (portable)
        sha256_blocks = sha256_portable;
    sha256_init(&c);
    sha256_update(&c, (const uint8_t *)b.buf, (size_t)b.len);
    sha256_final(&c, out);
    sha256_blocks = saved;
    PyBuffer_Release(&b);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

static PyMethodDef methods[] = {
    {"hash", (PyCFunction)(void (*)(void))fm_hash, METH_VARARGS | METH_KEYWORDS,
     "hash(key, length, *, fallback=None): the first `length` hex characters of the HMAC."},
    {"email", (PyCFunction)(void (*)(void))fm_email, METH_VARARGS | METH_KEYWORDS,
     "email(key, first, last, domains, *, fallback=None)"},
    {"names", (PyCFunction)(void (*)(void))fm_names, METH_VARARGS | METH_KEYWORDS,
     "names(key, kind, first, last, *, fallback=None): first_name, last_name or full_name."},
    {"address", (PyCFunction)(void (*)(void))fm_address, METH_VARARGS | METH_KEYWORDS,
     "address(key, streets, *, fallback=None)"},
    {"template", (PyCFunction)(void (*)(void))fm_template, METH_VARARGS | METH_KEYWORDS,
     "template(key, parts, *, fallback=None): parts as rules.parse_template gives them."},
    {"phone", (PyCFunction)(void (*)(void))fm_phone, METH_VARARGS | METH_KEYWORDS,
     "phone(key, keep_prefix=None, *, fallback=None)"},
    {"date_shift", (PyCFunction)(void (*)(void))fm_date_shift, METH_VARARGS | METH_KEYWORDS,
     "date_shift(key, days, *, fallback=None)"},
    {"sha256", (PyCFunction)(void (*)(void))fm_sha256, METH_VARARGS | METH_KEYWORDS,
     "sha256(data, portable=False): the embedded SHA-256 (for tests against hashlib)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pipelines.data._fastmask",
    "Compiled keyed transformers, byte-identical to those of pipelines.data.masking.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastmask(void)
{
    PyObject *m;
    const char *accel = "portable";
    if (PyType_Ready(&TransformType) < 0)
        return NULL;
#ifdef HAVE_SHANI
    if (cpu_has_shani()) {
        sha256_blocks = sha256_shani;
        accel = "sha-ni";
    }
#endif
    m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&TransformType);
    if (PyModule_AddObject(m, "Transform", (PyObject *)&TransformType) < 0
            || PyModule_AddStringConstant(m, "SHA256", accel) < 0) {
        Py_DECREF(&TransformType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
