/* The row loop of a masked COPY, compiled: `copy.RowMasker._rows` without the interpreter.
 *
 * Why: a masked snapshot spends most of its time walking rows, not masking values — values
 * repeat (a customer's e-mail on each of their orders, a name inside every order's JSON), so
 * most fields are cache hits, and in Python each hit still costs a split, a lookup, a join and
 * a few hundred bytecodes. Here a block of COPY text rows is split, looked up and joined in C;
 * Python runs only for what C has not seen: a field missing from its column's cache, a JSON
 * structure not planned yet, a JSON string missing from its path's cache. The caches and the
 * masking itself stay in Python (`copy.py`, `masking.py`), so there is one definition of what
 * a masked value is; this file only decides when Python needs to be asked.
 *
 * mask_rows(block, width, fields, jsons, search, flat, format_error, where)
 *   block    bytes: whole rows of COPY text, separated (not ended) by newlines
 *   width    the number of fields in a row
 *   fields   [(position, cache dict or None, field masker bytes -> bytes, direct)]: `direct`,
 *            when not None, is the column's transformer compiled (text -> text), called
 *            without the field masker's Python frames when its result needs no escaping
 *   jsons    [(position, structures dict, planner, fallback, searched, structures limit,
 *            strings limit)]:
 *            a JSON column, masked here when a document needs no unescaping (see below);
 *            `fallback(raw)` is the Python field masker for the rest: bytes -> bytes, or
 *            (masked, searched) when `searched`
 *   search   [position]: fields (after masking) handed to the leak search
 *   flat     bytes -> bytes: how a searched field holding a backslash is flattened
 *   format_error  the exception raised for a row with the wrong number of fields
 *   where    a list; on a masker's error its first item is set to the column position
 * -> (masked rows ending in a newline, [[searched field] per search position],
 *     [[searched text] per searched JSON column], number of rows)
 *
 * A JSON document whose COPY field holds no backslash and no control character, has an even
 * number of quotes and is printable is cut at its quotes: every quote delimits a string, so
 * the parts alternate between structure and string contents. Its structure (the even parts
 * joined by \x01) is looked up in `structures`: an entry (key indices, keys, plan) says where
 * the object keys are, which keys the plan was made for, and the plan: [(part index, cache,
 * miss, generated, direct)] — the strings the rules reach, each with its path's cache (string
 * contents -> masked contents, JSON-escaped) and the Python function that fills it
 * (`miss(contents)`, None when the rule writes null, which needs the Python path), or first
 * the compiled transformer `direct` (as for fields). When the entry is missing or
 * its keys differ, `planner(parts)` makes it (None: a structure that is not one JSON value).
 * The output is what `masking._JsonMasker` gives for the same document, byte for byte.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_grow(Buf *b, Py_ssize_t extra) {
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int buf_reserve(Buf *b, Py_ssize_t extra) {
    return b->len + extra <= b->cap ? 0 : buf_grow(b, extra);
}

static inline int buf_put(Buf *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

static inline int buf_byte(Buf *b, char c) {
    if (buf_reserve(b, 1) < 0)
        return -1;
    b->data[b->len++] = c;
    return 0;
}

/* Copy `s` with each backslash doubled (`to` = NULL) or written as `*to`. */
static int buf_put_backslashes(Buf *b, const char *s, Py_ssize_t n, const char *to) {
    const char *end = s + n, *at;
    while ((at = memchr(s, '\\', (size_t)(end - s))) != NULL) {
        if (buf_put(b, s, at - s) < 0 || buf_put(b, to ? to : at, 1) < 0 ||
            (to == NULL && buf_put(b, at, 1) < 0))
            return -1;
        s = at + 1;
    }
    return buf_put(b, s, end - s);
}

/* `miss(raw)`, or first `direct(text)`: a compiled transformer (text -> text) that gives what
 * the masker behind `miss` gives for text. Its result is used as it is when it needs no
 * escaping — ASCII, printable, no backslash (and no quote, `json`: it goes between quotes) —
 * and otherwise left to `miss`, which escapes; so is a field with a COPY escape in it. */
static PyObject *compute(PyObject *miss, PyObject *direct, int json, PyObject *raw) {
    const char *s = PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    if (direct != NULL && direct != Py_None && memchr(s, '\\', (size_t)n) == NULL) {
        PyObject *text = PyUnicode_DecodeUTF8(s, n, "strict");
        if (text == NULL) {
            PyErr_Clear(); /* `miss` reports it as the Python path does */
            return PyObject_CallOneArg(miss, raw);
        }
        PyObject *out = PyObject_CallOneArg(direct, text);
        Py_DECREF(text);
        if (out == NULL)
            return NULL;
        /* Text with nothing to escape is its UTF-8 as it is, in COPY's text format and
         * inside a JSON string alike: no control character, backslash or (in JSON) quote.
         * Anything else (or text UTF-8 cannot hold) takes the Python path. */
        const char *u = NULL;
        Py_ssize_t len = 0, i = 0;
        if (PyUnicode_Check(out)) {
            if (PyUnicode_IS_ASCII(out)) {
                u = (const char *)PyUnicode_1BYTE_DATA(out);
                len = PyUnicode_GET_LENGTH(out);
            } else if ((u = PyUnicode_AsUTF8AndSize(out, &len)) == NULL) {
                PyErr_Clear();
            }
        }
        while (u != NULL && i < len) {
            unsigned char c = (unsigned char)u[i];
            if (c < 0x20 || c == 0x7f || c == '\\' || (json && c == '"'))
                break;
            i++;
        }
        if (u != NULL && i == len) {
            PyObject *bytes = PyBytes_FromStringAndSize(u, len);
            Py_DECREF(out);
            return bytes;
        }
        Py_DECREF(out);
    }
    return PyObject_CallOneArg(miss, raw);
}

/* A small direct-mapped cache in front of the dicts, for one call: a value seen a moment ago
 * (a customer's e-mail on each of their consecutive orders) is found without a bytes object,
 * a hash of Python's or a dict lookup in a big, cold table. Slots are tagged with their
 * owner (the miss function: one per column or JSON path). */
#define FRONT 512
typedef struct {
    uint64_t hash;
    const void *owner;
    PyObject *key, *value; /* references, NULL: an empty slot */
} FrontSlot;
typedef struct {
    FrontSlot slots[FRONT];
} Front;

static void front_free(Front *front) {
    for (int i = 0; front != NULL && i < FRONT; i++) {
        Py_XDECREF(front->slots[i].key);
        Py_XDECREF(front->slots[i].value);
    }
    PyMem_Free(front);
}

static uint64_t hash_bytes(const char *s, Py_ssize_t n);
static PyObject *cached_in(PyObject *cache, PyObject *miss, PyObject *direct, int json,
                           PyObject *key, Py_ssize_t limit);

/* The value of `key` in `cache`, computed (`compute`) when absent (a new reference; NULL with
 * an exception set on error). `limit` > 0 bounds the cache: it starts over when full. `cache`
 * is None for a column or path whose compiled transformer costs about what a lookup in a big
 * dict does: `front` alone keeps the values that repeat nearby. */
static PyObject *cached(Front *front, PyObject *cache, PyObject *miss, PyObject *direct,
                        int json, const char *s, Py_ssize_t n, Py_ssize_t limit) {
    uint64_t hash = hash_bytes(s, n) ^ ((uint64_t)(uintptr_t)miss * 0x9E3779B97F4A7C15ULL);
    FrontSlot *slot = front != NULL ? &front->slots[hash % FRONT] : NULL;
    if (slot != NULL && slot->key != NULL && slot->hash == hash && slot->owner == miss &&
        PyBytes_GET_SIZE(slot->key) == n && memcmp(PyBytes_AS_STRING(slot->key), s, (size_t)n) == 0) {
        Py_INCREF(slot->value);
        return slot->value;
    }
    PyObject *key = PyBytes_FromStringAndSize(s, n);
    if (key == NULL)
        return NULL;
    PyObject *out = cached_in(cache, miss, direct, json, key, limit);
    if (out != NULL && slot != NULL) {
        Py_INCREF(key);
        Py_INCREF(out);
        Py_XSETREF(slot->key, key);
        Py_XSETREF(slot->value, out);
        slot->hash = hash;
        slot->owner = miss;
    }
    Py_DECREF(key);
    return out;
}

static PyObject *cached_in(PyObject *cache, PyObject *miss, PyObject *direct, int json,
                           PyObject *key, Py_ssize_t limit) {
    if (cache == Py_None)
        return compute(miss, direct, json, key);
    PyObject *found = PyDict_GetItemWithError(cache, key);
    if (found != NULL) {
        Py_INCREF(found);
        return found;
    }
    if (PyErr_Occurred())
        return NULL;
    PyObject *out = compute(miss, direct, json, key);
    if (out == NULL)
        return NULL;
    if (limit > 0 && PyDict_GET_SIZE(cache) >= limit)
        PyDict_Clear(cache);
    if (PyDict_SetItem(cache, key, out) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* ------------------------------------------------------------------------------ JSON */

typedef struct {
    const char *s;
    Py_ssize_t n;
} Part;


typedef struct {
    Py_ssize_t position;
    PyObject *structures, *planner, *fallback;
    int searched;
    Py_ssize_t limit, leaf_limit; /* entries in `structures`, in each string cache */
    PyObject *beside; /* list of searched texts, when searched */
    struct Recent *recent; /* RECENT slots: the plans met in this call, decoded */
    Front *front;          /* its strings met in this call */
} Json;

/* A plan as `json_quick` follows it, read out of its Python tuples once per block rather
 * than once per document: the structure it is for (and its hash), the keys it was made for,
 * and its steps. Documents of one column come in a handful of structures, so nearly every
 * document finds its plan here without a dict lookup or a new bytes object. */
#define RECENT 64
#define MAX_ITEMS 64
typedef struct Recent {
    uint64_t hash;
    PyObject *structure; /* bytes (a reference), NULL: an empty slot */
    PyObject *entry;     /* its (indices, keys, plan) tuple (a reference) */
    PyObject *plan;      /* the entry's plan: borrowed; Py_None: the Python path */
    int nkeys, nsteps;
    Py_ssize_t keys[MAX_ITEMS], steps[MAX_ITEMS];
    int generated[MAX_ITEMS];
} Recent;

static void recent_clear(Recent *recent) {
    for (int i = 0; recent != NULL && i < RECENT; i++) {
        Py_CLEAR(recent[i].structure);
        Py_CLEAR(recent[i].entry);
    }
}

/* The hash of the structure the even parts make (each part's hash, mixed in order). */
static uint64_t structure_hash(const Part *parts, Py_ssize_t count) {
    uint64_t h = 0;
    for (Py_ssize_t i = 0; i < count; i += 2) {
        h = (h ^ hash_bytes(parts[i].s, parts[i].n)) * 0x9E3779B97F4A7C15ULL;
        h ^= h >> 31;
    }
    return h;
}

static int structure_equal(PyObject *structure, const Part *parts, Py_ssize_t count) {
    const char *w = PyBytes_AS_STRING(structure), *end = w + PyBytes_GET_SIZE(structure);
    for (Py_ssize_t i = 0; i < count; i += 2) {
        if (i > 0 && (w >= end || *w++ != '\x01'))
            return 0;
        if (end - w < parts[i].n || memcmp(w, parts[i].s, (size_t)parts[i].n) != 0)
            return 0;
        w += parts[i].n;
    }
    return w == end;
}

static int keys_equal(const Recent *r, const Part *parts, Py_ssize_t count) {
    PyObject *keys = PyTuple_GET_ITEM(r->entry, 1);
    for (int k = 0; k < r->nkeys; k++) {
        Py_ssize_t at = r->keys[k];
        PyObject *key = PyTuple_GET_ITEM(keys, k);
        if (at < 0 || at >= count || PyBytes_GET_SIZE(key) != parts[at].n ||
            memcmp(PyBytes_AS_STRING(key), parts[at].s, (size_t)parts[at].n) != 0)
            return 0;
    }
    return 1;
}

/* Fill slot `r` from a planner's entry; 0 when the entry cannot be decoded here (more keys
 * or steps than MAX_ITEMS): the caller then takes the Python path. -1 on error. */
static int recent_fill(Recent *r, uint64_t hash, PyObject *structure, PyObject *entry) {
    PyObject *indices = PyTuple_GET_ITEM(entry, 0), *plan = PyTuple_GET_ITEM(entry, 2);
    Py_ssize_t nk = PyTuple_GET_SIZE(indices);
    Py_ssize_t ns = plan == Py_None ? 0 : PyTuple_GET_SIZE(plan);
    if (nk > MAX_ITEMS || ns > MAX_ITEMS || PyTuple_GET_SIZE(PyTuple_GET_ITEM(entry, 1)) != nk)
        return 0;
    for (Py_ssize_t k = 0; k < nk; k++)
        r->keys[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(indices, k));
    for (Py_ssize_t p = 0; p < ns; p++) {
        PyObject *step = PyTuple_GET_ITEM(plan, p);
        r->steps[p] = PyLong_AsSsize_t(PyTuple_GET_ITEM(step, 0));
        r->generated[p] = PyObject_IsTrue(PyTuple_GET_ITEM(step, 3));
        if (r->generated[p] < 0)
            return -1;
    }
    if (PyErr_Occurred())
        return -1;
    Py_INCREF(structure);
    Py_INCREF(entry);
    Py_XSETREF(r->structure, structure);
    Py_XSETREF(r->entry, entry);
    r->hash = hash;
    r->plan = plan;
    r->nkeys = (int)nk;
    r->nsteps = (int)ns;
    return 1;
}

/* Whether a field can be cut at its quotes: no backslash, no control character, printable.
 * Bytes over 0x7f are checked as text (Python's str.isprintable), which is rare and costly;
 * -1 on error. */
static int quick_field(const char *s, Py_ssize_t n, Py_ssize_t *quotes) {
    int ascii = 1;
    Py_ssize_t q = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"')
            q++;
        else if (c == '\\' || c < 0x20 || c == 0x7f)
            return 0;
        else if (c > 0x7f)
            ascii = 0;
    }
    *quotes = q;
    if (ascii)
        return 1;
    PyObject *text = PyUnicode_DecodeUTF8(s, n, "strict");
    if (text == NULL) {
        PyErr_Clear(); /* the Python path reports it */
        return 0;
    }
    Py_ssize_t len = PyUnicode_GET_LENGTH(text);
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    int printable = 1;
    for (Py_ssize_t i = 0; i < len && printable; i++)
        printable = Py_UNICODE_ISPRINTABLE(PyUnicode_READ(kind, data, i));
    Py_DECREF(text);
    return printable;
}

/* The plan for these parts, decoded (`Recent`); NULL with `*python` set when the document
 * needs the Python path, NULL without it on error. */
static Recent *json_plan(Json *j, Part *parts, Py_ssize_t count, int *python) {
    *python = 0;
    uint64_t hash = structure_hash(parts, count);
    Recent *r = &j->recent[hash % RECENT];
    if (r->structure != NULL && r->hash == hash && structure_equal(r->structure, parts, count)
        && keys_equal(r, parts, count)) {
        *python = r->plan == Py_None;
        return *python ? NULL : r;
    }
    Py_ssize_t size = count / 2; /* \x01 between the even parts */
    for (Py_ssize_t i = 0; i < count; i += 2)
        size += parts[i].n;
    PyObject *structure = PyBytes_FromStringAndSize(NULL, size);
    if (structure == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(structure);
    for (Py_ssize_t i = 0; i < count; i += 2) {
        if (i > 0)
            *w++ = '\x01';
        memcpy(w, parts[i].s, (size_t)parts[i].n);
        w += parts[i].n;
    }
    PyObject *entry = PyDict_GetItemWithError(j->structures, structure);
    if (entry == NULL && PyErr_Occurred()) {
        Py_DECREF(structure);
        return NULL;
    }
    if (entry == Py_None) { /* not one JSON value */
        Py_DECREF(structure);
        *python = 1;
        return NULL;
    }
    Py_XINCREF(entry);
    if (entry != NULL) { /* known: the plan of the keys it was last seen with */
        int filled = recent_fill(r, hash, structure, entry);
        if (filled < 0)
            goto failed;
        if (filled == 0)
            goto python_path;
        if (keys_equal(r, parts, count))
            goto found;
        Py_CLEAR(entry);
    }
    PyObject *list = PyList_New(count);
    if (list == NULL)
        goto failed;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *part = PyBytes_FromStringAndSize(parts[i].s, parts[i].n);
        if (part == NULL) {
            Py_DECREF(list);
            goto failed;
        }
        PyList_SET_ITEM(list, i, part);
    }
    entry = PyObject_CallOneArg(j->planner, list);
    Py_DECREF(list);
    if (entry == NULL)
        goto failed;
    if (entry != Py_None && (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3 ||
                             !PyTuple_Check(PyTuple_GET_ITEM(entry, 0)) ||
                             !PyTuple_Check(PyTuple_GET_ITEM(entry, 1)))) {
        PyErr_SetString(PyExc_TypeError, "a JSON planner returns (indices, keys, plan) or None");
        goto failed;
    }
    if (PyDict_GET_SIZE(j->structures) >= j->limit)
        PyDict_Clear(j->structures);
    if (PyDict_SetItem(j->structures, structure, entry) < 0)
        goto failed;
    if (entry == Py_None)
        goto python_path;
    int filled = recent_fill(r, hash, structure, entry);
    if (filled < 0)
        goto failed;
    if (filled == 0)
        goto python_path;
found:
    Py_DECREF(structure);
    Py_DECREF(entry);
    *python = r->plan == Py_None;
    return *python ? NULL : r;
python_path:
    *python = 1;
failed:
    Py_DECREF(structure);
    Py_XDECREF(entry);
    return NULL;
}

/* Mask one JSON field into `out` (and its searched text into `searched`). Returns 1 when
 * done, 0 when the field needs the Python path (nothing written), -1 on error. */
static int json_quick(Json *j, const char *s, Py_ssize_t n, Buf *out, Buf *searched,
                      Part **scratch, Py_ssize_t *scratch_cap) {
    Py_ssize_t quotes = 0;
    int quick = quick_field(s, n, &quotes);
    if (quick <= 0)
        return quick;
    if (quotes & 1) /* not JSON: the Python path redacts it */
        return 0;
    Py_ssize_t count = quotes + 1;
    if (count > *scratch_cap) {
        Part *grown = PyMem_Realloc(*scratch, (size_t)count * sizeof(Part));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        *scratch = grown;
        *scratch_cap = count;
    }
    Part *parts = *scratch;
    Py_ssize_t start = 0, k = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] == '"') {
            parts[k].s = s + start;
            parts[k].n = i - start;
            k++;
            start = i + 1;
        }
    }
    parts[k].s = s + start;
    parts[k].n = n - start;

    int python;
    Recent *r = json_plan(j, parts, count, &python);
    if (r == NULL)
        return python ? 0 : -1;
    PyObject *plan = r->plan;
    Py_ssize_t steps = r->nsteps;
    PyObject *masked[MAX_ITEMS];
    for (Py_ssize_t p = 0; p < steps; p++) {
        PyObject *step = PyTuple_GET_ITEM(plan, p);
        Py_ssize_t at = r->steps[p];
        PyObject *value = NULL;
        if (at >= 0 && at < count)
            value = cached(j->front, PyTuple_GET_ITEM(step, 1), PyTuple_GET_ITEM(step, 2),
                           PyTuple_GET_ITEM(step, 4), 1, parts[at].s, parts[at].n,
                           j->leaf_limit);
        else
            PyErr_SetString(PyExc_IndexError, "a JSON plan points outside the document");
        if (value == NULL || value == Py_None || !PyBytes_Check(value)) {
            int bad = value != NULL && value != Py_None;
            Py_XDECREF(value);
            for (Py_ssize_t q = 0; q < p; q++)
                Py_DECREF(masked[q]);
            if (bad)
                PyErr_SetString(PyExc_TypeError, "a JSON leaf masker returns bytes or None");
            return (value == NULL || bad) ? -1 : 0;
        }
        masked[p] = value;
    }
    /* Write the document: the field as it is, with the planned strings replaced. The rest
     * holds no backslash (`quick_field`); a masked string may, escaped for JSON: doubled for
     * COPY, and a space in the searched text, as `copy.FLAT` makes it. */
    int rc = 1;
    const char *at = s;
    for (Py_ssize_t p = 0; p < steps && rc == 1; p++) {
        const Part *part = &parts[r->steps[p]];
        const char *text = PyBytes_AS_STRING(masked[p]);
        Py_ssize_t len = PyBytes_GET_SIZE(masked[p]);
        if (buf_put(out, at, part->s - at) < 0 || buf_put_backslashes(out, text, len, NULL) < 0 ||
            (searched && (buf_put(searched, at, part->s - at) < 0 ||
                          (!r->generated[p] && buf_put_backslashes(searched, text, len, " ") < 0))))
            rc = -1;
        at = part->s + part->n;
    }
    if (rc == 1 && (buf_put(out, at, s + n - at) < 0 ||
                    (searched && buf_put(searched, at, s + n - at) < 0)))
        rc = -1;
    for (Py_ssize_t q = 0; q < steps; q++)
        Py_DECREF(masked[q]);
    return rc;
}

/* ------------------------------------------------------------------------------ rows */

enum { PASS = 0, FIELD = 1, JSON = 2 };

typedef struct {
    int kind;
    PyObject *cache, *mask, *direct; /* FIELD */
    Front *front;                    /* FIELD: its values met in this call */
    Json *json;             /* JSON */
} Column;

static PyObject *mask_rows(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer block;
    Py_ssize_t width;
    PyObject *fields, *jsons, *search, *flat, *format_error, *where;
    if (!PyArg_ParseTuple(args, "y*nO!O!O!OOO!", &block, &width, &PyList_Type, &fields,
                          &PyList_Type, &jsons, &PyList_Type, &search, &flat, &format_error,
                          &PyList_Type, &where))
        return NULL;
    PyObject *result = NULL, *searched_lists = NULL, *beside_lists = NULL;
    Column *columns = NULL;
    Json *json_specs = NULL;
    Py_ssize_t *bounds = NULL, *search_at = NULL;
    PyObject **values = NULL;
    Part *scratch = NULL;
    Py_ssize_t scratch_cap = 0;
    Buf out = {0}, text = {0};
    Py_ssize_t nsearch = PyList_GET_SIZE(search), njson = PyList_GET_SIZE(jsons);

    if (width < 1 || width > 100000) {
        PyErr_SetString(PyExc_ValueError, "width out of range");
        goto done;
    }
    columns = PyMem_Calloc((size_t)width, sizeof(Column));
    bounds = PyMem_Calloc((size_t)width + 1, sizeof(Py_ssize_t));
    values = PyMem_Calloc((size_t)width, sizeof(PyObject *));
    search_at = PyMem_Calloc((size_t)nsearch + 1, sizeof(Py_ssize_t));
    json_specs = PyMem_Calloc((size_t)njson + 1, sizeof(Json));
    searched_lists = PyList_New(nsearch);
    beside_lists = PyList_New(0);
    if (!columns || !bounds || !values || !search_at || !json_specs) {
        PyErr_NoMemory();
        goto done;
    }
    if (!searched_lists || !beside_lists)
        goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(fields); i++) {
        Py_ssize_t at;
        PyObject *cache, *mask, *direct;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(fields, i), "nOOO", &at, &cache, &mask, &direct))
            goto done;
        if (at < 0 || at >= width || (cache != Py_None && !PyDict_Check(cache))) {
            PyErr_SetString(PyExc_ValueError, "a masked field is outside the row");
            goto done;
        }
        columns[at] = (Column){FIELD, cache, mask, direct, PyMem_Calloc(1, sizeof(Front)),
                               NULL};
        if (columns[at].front == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < njson; i++) {
        Json *j = &json_specs[i];
        if (!PyArg_ParseTuple(PyList_GET_ITEM(jsons, i), "nO!OOpnn", &j->position,
                              &PyDict_Type, &j->structures, &j->planner, &j->fallback,
                              &j->searched, &j->limit, &j->leaf_limit))
            goto done;
        if (j->position < 0 || j->position >= width) {
            PyErr_SetString(PyExc_ValueError, "a JSON field is outside the row");
            goto done;
        }
        j->recent = PyMem_Calloc(RECENT, sizeof(Recent));
        j->front = PyMem_Calloc(1, sizeof(Front));
        if (j->recent == NULL || j->front == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        if (j->searched) {
            j->beside = PyList_New(0);
            if (j->beside == NULL || PyList_Append(beside_lists, j->beside) < 0)
                goto done;
            Py_DECREF(j->beside); /* beside_lists holds it */
        }
        columns[j->position] = (Column){JSON, NULL, NULL, NULL, NULL, j};
    }
    for (Py_ssize_t i = 0; i < nsearch; i++) {
        search_at[i] = PyLong_AsSsize_t(PyList_GET_ITEM(search, i));
        if (search_at[i] < 0 || search_at[i] >= width) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a searched field is outside the row");
            goto done;
        }
        PyObject *list = PyList_New(0);
        if (list == NULL)
            goto done;
        PyList_SET_ITEM(searched_lists, i, list);
    }

    const char *data = block.buf;
    Py_ssize_t size = block.len, line = 0, nrows = 0;
    if (buf_reserve(&out, size + size / 4 + 16) < 0)
        goto done;
    for (;;) {
        const char *nl = memchr(data + line, '\n', (size_t)(size - line));
        Py_ssize_t end = nl ? nl - data : size;
        /* Field bounds: bounds[k] is where field k starts, bounds[k+1] - 1 where it ends. */
        Py_ssize_t k = 0, pos = line;
        bounds[0] = line;
        while (pos < end) {
            const char *tab = memchr(data + pos, '\t', (size_t)(end - pos));
            if (tab == NULL)
                break;
            if (++k >= width) {
                k = width; /* too many: counted below */
                while ((tab = memchr(tab + 1, '\t', (size_t)(data + end - tab - 1))))
                    k++;
                break;
            }
            pos = tab - data + 1;
            bounds[k] = pos;
        }
        if (k + 1 != width) {
            PyErr_Format(format_error, "a COPY row has %zd fields, expected %zd", k + 1, width);
            goto done;
        }
        bounds[width] = end + 1;
        for (Py_ssize_t c = 0; c < width; c++) {
            const char *f = data + bounds[c];
            Py_ssize_t n = bounds[c + 1] - 1 - bounds[c];
            Column *col = &columns[c];
            if (c > 0 && buf_byte(&out, '\t') < 0)
                goto done;
            if (col->kind == PASS) {
                if (buf_put(&out, f, n) < 0)
                    goto done;
                continue;
            }
            if (col->kind == FIELD) {
                PyObject *v = cached(col->front, col->cache, col->mask, col->direct, 0, f, n,
                                     0);
                if (v == NULL || !PyBytes_Check(v)) {
                    if (v != NULL)
                        PyErr_SetString(PyExc_TypeError, "a field masker returns bytes");
                    Py_XDECREF(v);
                    goto failed_at_column;
                }
                values[c] = v;
                if (buf_put(&out, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v)) < 0)
                    goto done;
                continue;
            }
            Json *j = col->json;
            if (n == 2 && f[0] == '\\' && f[1] == 'N') { /* NULL stays NULL */
                if (buf_put(&out, f, n) < 0)
                    goto done;
                if (j->searched) {
                    PyObject *empty = PyBytes_FromStringAndSize("", 0);
                    int failed = empty == NULL || PyList_Append(j->beside, empty) < 0;
                    Py_XDECREF(empty);
                    if (failed)
                        goto done;
                }
                continue;
            }
            Py_ssize_t mark = out.len;
            text.len = 0;
            int rc = json_quick(j, f, n, &out, j->searched ? &text : NULL, &scratch,
                                &scratch_cap);
            if (rc < 0)
                goto failed_at_column;
            if (rc == 1) {
                if (values[c] == NULL && nsearch) {
                    values[c] = PyBytes_FromStringAndSize(out.data + mark, out.len - mark);
                    if (values[c] == NULL)
                        goto done;
                }
                if (j->searched) {
                    PyObject *t = PyBytes_FromStringAndSize(text.data, text.len);
                    int failed = t == NULL || PyList_Append(j->beside, t) < 0;
                    Py_XDECREF(t);
                    if (failed)
                        goto done;
                }
                continue;
            }
            out.len = mark; /* the Python path, for the whole field */
            PyObject *raw = PyBytes_FromStringAndSize(f, n);
            if (raw == NULL)
                goto done;
            PyObject *r = PyObject_CallOneArg(j->fallback, raw);
            Py_DECREF(raw);
            if (r == NULL)
                goto failed_at_column;
            PyObject *masked = r, *found = NULL;
            if (j->searched) {
                if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) != 2) {
                    Py_DECREF(r);
                    PyErr_SetString(PyExc_TypeError, "a searched JSON fallback returns a pair");
                    goto done;
                }
                masked = PyTuple_GET_ITEM(r, 0);
                found = PyTuple_GET_ITEM(r, 1);
            }
            if (!PyBytes_Check(masked) || (found && !PyBytes_Check(found))) {
                Py_DECREF(r);
                PyErr_SetString(PyExc_TypeError, "a JSON fallback returns bytes");
                goto done;
            }
            int failed = buf_put(&out, PyBytes_AS_STRING(masked), PyBytes_GET_SIZE(masked)) < 0
                         || (found && PyList_Append(j->beside, found) < 0);
            Py_INCREF(masked);
            values[c] = masked;
            Py_DECREF(r);
            if (failed)
                goto done;
            continue;
        failed_at_column:
            if (PyErr_ExceptionMatches(PyExc_ValueError) ||
                PyErr_ExceptionMatches(PyExc_UnicodeError)) {
                PyObject *at = PyLong_FromSsize_t(c);
                if (at == NULL)
                    goto done;
                if (PyList_GET_SIZE(where) > 0)
                    PyList_SetItem(where, 0, at); /* steals */
                else {
                    PyList_Append(where, at);
                    Py_DECREF(at);
                }
            }
            goto done;
        }
        if (buf_byte(&out, '\n') < 0)
            goto done;
        for (Py_ssize_t s = 0; s < nsearch; s++) {
            Py_ssize_t c = search_at[s];
            PyObject *v = values[c];
            if (v == NULL) {
                v = PyBytes_FromStringAndSize(data + bounds[c], bounds[c + 1] - 1 - bounds[c]);
                if (v == NULL)
                    goto done;
                values[c] = v;
            }
            PyObject *item = v;
            if (memchr(PyBytes_AS_STRING(v), '\\', (size_t)PyBytes_GET_SIZE(v))) {
                item = PyObject_CallOneArg(flat, v);
                if (item == NULL)
                    goto done;
            } else {
                Py_INCREF(item);
            }
            int failed = PyList_Append(PyList_GET_ITEM(searched_lists, s), item) < 0;
            Py_DECREF(item);
            if (failed)
                goto done;
        }
        for (Py_ssize_t c = 0; c < width; c++)
            Py_CLEAR(values[c]);
        nrows++;
        if (nl == NULL)
            break;
        line = end + 1;
    }
    PyObject *rows = PyBytes_FromStringAndSize(out.data, out.len);
    PyObject *count = PyLong_FromSsize_t(nrows);
    if (rows != NULL && count != NULL)
        result = PyTuple_Pack(4, rows, searched_lists, beside_lists, count);
    Py_XDECREF(rows);
    Py_XDECREF(count);

done:
    if (values)
        for (Py_ssize_t c = 0; c < width; c++)
            Py_XDECREF(values[c]);
    PyMem_Free(values);
    for (Py_ssize_t c = 0; columns != NULL && c < width; c++)
        front_free(columns[c].front);
    PyMem_Free(columns);
    PyMem_Free(bounds);
    PyMem_Free(search_at);
    for (Py_ssize_t i = 0; json_specs != NULL && i < njson; i++) {
        recent_clear(json_specs[i].recent);
        PyMem_Free(json_specs[i].recent);
        front_free(json_specs[i].front);
    }
    PyMem_Free(json_specs);
    PyMem_Free(scratch);
    PyMem_Free(out.data);
    PyMem_Free(text.data);
    Py_XDECREF(searched_lists);
    Py_XDECREF(beside_lists);
    PyBuffer_Release(&block);
    return result;
}

/* ------------------------------------------------------------------------------ leak search */

/* Needles(whole, words): the leak search's lookups (`leaks.find`) without a Python object per
 * searched value or word. `whole` are values looked for as a whole searched value (each line
 * of one), `words` the anchors looked for among the words of the searched text (words: runs of
 * bytes that are neither ASCII whitespace nor one of `leaks._DELIMITERS`).
 * scan(values) -> (indices of `whole` found, indices of `words` found), each index once. */

typedef struct {
    const char *s;
    Py_ssize_t n;
    Py_ssize_t index; /* -1: an empty slot */
} Slot;

typedef struct {
    Slot *slots;
    size_t mask;
} Table;

typedef struct {
    PyObject_HEAD
    PyObject *held; /* the tuple of both lists: keeps the bytes the slots point into alive */
    Table whole, words;
    Py_ssize_t nwhole, nwords;
    /* Filters that turn most words and lines away before they are hashed: the lengths of the
     * words looked for (64: longer), and their first and last bytes; the same for the whole
     * values (256: longer). */
    unsigned char lengths[65];
    uint64_t ends[65536 / 64];
    unsigned char whole_lengths[257];
    uint64_t whole_ends[65536 / 64];
} Needles;

/* The bit of `ends` for a run of n bytes at s (n > 0): its first and last byte. */
static inline unsigned ends_bit(const char *s, Py_ssize_t n) {
    return (unsigned)(unsigned char)s[0] << 8 | (unsigned char)s[n - 1];
}

/* Whether the filters let a run of n bytes at s through (n > 0). */
static inline int may_be(const unsigned char *lengths, Py_ssize_t longest, const uint64_t *ends,
                         const char *s, Py_ssize_t n) {
    if (!lengths[n < longest ? n : longest])
        return 0;
    unsigned bit = ends_bit(s, n);
    return (int)(ends[bit / 64] >> (bit % 64) & 1);
}

static void filter_add(unsigned char *lengths, Py_ssize_t longest, uint64_t *ends,
                       const char *s, Py_ssize_t n) {
    lengths[n < longest ? n : longest] = 1;
    if (n > 0) {
        unsigned bit = ends_bit(s, n);
        ends[bit / 64] |= (uint64_t)1 << (bit % 64);
    }
}

static unsigned char SEPARATOR[256];

/* A hash of n bytes for this module's tables (never stored: any process may hash
 * differently). Eight bytes a step, then a final mix so that every bit of the input reaches
 * the low bits the tables index with. */
static uint64_t hash_bytes(const char *s, Py_ssize_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n, word;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&word, s + i, 8);
        h = (h ^ word) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
    }
    if (i < n) {
        word = 0; /* the last 1-7 bytes, without a call to memcpy for so few */
        for (int k = 0; i + k < n; k++)
            word |= (uint64_t)(unsigned char)s[i + k] << (8 * k);
        h = (h ^ word) * 0xC4CEB9FE1A85EC53ULL;
        h ^= h >> 29;
    }
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    return h;
}

static int table_build(Table *t, PyObject *list) {
    Py_ssize_t count = PyList_GET_SIZE(list);
    size_t size = 16;
    while (size < (size_t)count * 2 + 1)
        size *= 2;
    t->slots = PyMem_Malloc(size * sizeof(Slot));
    if (t->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->mask = size - 1;
    for (size_t i = 0; i < size; i++)
        t->slots[i].index = -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "needles are bytes");
            return -1;
        }
        const char *s = PyBytes_AS_STRING(item);
        Py_ssize_t n = PyBytes_GET_SIZE(item);
        size_t at = (size_t)hash_bytes(s, n) & t->mask;
        while (t->slots[at].index >= 0 &&
               !(t->slots[at].n == n && memcmp(t->slots[at].s, s, (size_t)n) == 0))
            at = (at + 1) & t->mask;
        if (t->slots[at].index < 0)
            t->slots[at] = (Slot){s, n, i};
    }
    return 0;
}

static Py_ssize_t table_find(const Table *t, const char *s, Py_ssize_t n) {
    size_t at = (size_t)hash_bytes(s, n) & t->mask;
    while (t->slots[at].index >= 0) {
        if (t->slots[at].n == n && memcmp(t->slots[at].s, s, (size_t)n) == 0)
            return t->slots[at].index;
        at = (at + 1) & t->mask;
    }
    return -1;
}

static void needles_dealloc(Needles *self) {
    PyMem_Free(self->whole.slots);
    PyMem_Free(self->words.slots);
    Py_XDECREF(self->held);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *needles_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *whole, *words;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) > 0) {
        PyErr_SetString(PyExc_TypeError, "Needles takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &whole, &PyList_Type, &words))
        return NULL;
    Needles *self = (Needles *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    PyObject *a = PyList_GetSlice(whole, 0, PY_SSIZE_T_MAX);
    PyObject *b = PyList_GetSlice(words, 0, PY_SSIZE_T_MAX);
    if (a != NULL && b != NULL)
        self->held = PyTuple_Pack(2, a, b);
    Py_XDECREF(a);
    Py_XDECREF(b);
    if (self->held == NULL || table_build(&self->whole, PyTuple_GET_ITEM(self->held, 0)) < 0 ||
        table_build(&self->words, PyTuple_GET_ITEM(self->held, 1)) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->nwhole = PyList_GET_SIZE(whole);
    self->nwords = PyList_GET_SIZE(words);
    for (Py_ssize_t i = 0; i < self->nwords; i++) {
        PyObject *word = PyList_GET_ITEM(PyTuple_GET_ITEM(self->held, 1), i);
        if (PyBytes_GET_SIZE(word) > 0)
            filter_add(self->lengths, 64, self->ends, PyBytes_AS_STRING(word),
                       PyBytes_GET_SIZE(word));
    }
    for (Py_ssize_t i = 0; i < self->nwhole; i++) {
        PyObject *value = PyList_GET_ITEM(PyTuple_GET_ITEM(self->held, 0), i);
        filter_add(self->whole_lengths, 256, self->whole_ends, PyBytes_AS_STRING(value),
                   PyBytes_GET_SIZE(value));
    }
    return (PyObject *)self;
}

/* Append index `i` to `list` unless `seen[i]` says it is there already. */
static int found_once(PyObject *list, unsigned char *seen, Py_ssize_t i) {
    if (i < 0 || seen[i])
        return 0;
    seen[i] = 1;
    PyObject *index = PyLong_FromSsize_t(i);
    if (index == NULL)
        return -1;
    int rc = PyList_Append(list, index);
    Py_DECREF(index);
    return rc;
}

static PyObject *needles_scan(Needles *self, PyObject *values) {
    if (!PyList_Check(values)) {
        PyErr_SetString(PyExc_TypeError, "scan takes a list of bytes");
        return NULL;
    }
    PyObject *whole = PyList_New(0), *words = PyList_New(0), *result = NULL;
    unsigned char *seen_whole = PyMem_Calloc((size_t)self->nwhole + 1, 1);
    unsigned char *seen_words = PyMem_Calloc((size_t)self->nwords + 1, 1);
    if (whole == NULL || words == NULL || seen_whole == NULL || seen_words == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t v = 0; v < PyList_GET_SIZE(values); v++) {
        PyObject *item = PyList_GET_ITEM(values, v);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "scan takes a list of bytes");
            goto done;
        }
        const char *s = PyBytes_AS_STRING(item);
        Py_ssize_t n = PyBytes_GET_SIZE(item), line = 0;
        for (Py_ssize_t i = 0; i <= n; i++) { /* each line, as a whole */
            if (i < n && s[i] != '\n')
                continue;
            Py_ssize_t len = i - line;
            if (self->nwhole && (len == 0 ? self->whole_lengths[0]
                                 : may_be(self->whole_lengths, 256, self->whole_ends, s + line,
                                          len)) &&
                found_once(whole, seen_whole, table_find(&self->whole, s + line, len)) < 0)
                goto done;
            line = i + 1;
        }
        if (!self->nwords)
            continue;
        Py_ssize_t i = 0;
        while (i < n) { /* each word */
            while (i < n && SEPARATOR[(unsigned char)s[i]])
                i++;
            Py_ssize_t start = i;
            while (i < n && !SEPARATOR[(unsigned char)s[i]])
                i++;
            Py_ssize_t len = i - start;
            if (len == 0 || !may_be(self->lengths, 64, self->ends, s + start, len))
                continue;
            if (found_once(words, seen_words, table_find(&self->words, s + start, len)) < 0)
                goto done;
        }
    }
    result = PyTuple_Pack(2, whole, words);
done:
    Py_XDECREF(whole);
    Py_XDECREF(words);
    PyMem_Free(seen_whole);
    PyMem_Free(seen_words);
    return result;
}

static PyMethodDef needles_methods[] = {
    {"scan", (PyCFunction)needles_scan, METH_O,
     "scan(values) -> (indices of whole values found, indices of words found)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject NeedlesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pipelines.data._rowmask.Needles",
    .tp_basicsize = sizeof(Needles),
    .tp_dealloc = (destructor)needles_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The leak search's values and anchor words, looked up in C.",
    .tp_methods = needles_methods,
    .tp_new = needles_new,
};

static PyMethodDef methods[] = {
    {"mask_rows", mask_rows, METH_VARARGS,
     "Mask a block of COPY text rows (see the module's source for the arguments)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rowmask",
    "The row loop of a masked COPY, compiled (pipelines.data.copy).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__rowmask(void) {
    /* leaks._DELIMITERS and ASCII whitespace (what bytes.split() splits on) */
    const char *separators = ".,;:!?()<>[]{}\"'|=/*\\ \t\n\r\x0b\x0c";
    for (const char *c = separators; *c; c++)
        SEPARATOR[(unsigned char)*c] = 1;
    if (PyType_Ready(&NeedlesType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&NeedlesType);
    if (PyModule_AddObject(m, "Needles", (PyObject *)&NeedlesType) < 0) {
        Py_DECREF(&NeedlesType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
