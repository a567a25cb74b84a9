/* Validation of a protocol msgpack message without building it.
 *
 * `check(data, ext1_min, ext1_max, budget)` walks the bytes once, iteratively, and
 * returns None when they hold exactly one msgpack value that the protocol's decoder
 * accepts, else a short description of the first problem found. Nothing is allocated: the
 * cost is a few nanoseconds per value whatever the shape (docs/frame-outcomes.md).
 * With a budget, it gives up (returns False) after about that many values, so that the
 * caller can run the whole check again in a thread: budget 0 releases the GIL.
 *
 * Accepted, as the msgspec decoder with codec.ext_hook accepts it:
 * - str: valid UTF-8 (strict: no overlong forms, no surrogates, nothing above U+10FFFF);
 * - str, bin and ext payloads of at most MAX_BYTES bytes, arrays of at most MAX_ARRAY
 *   items, maps of at most MAX_MAP entries, at most MAX_DEPTH containers open at once;
 * - ext 1: 8 bytes, a big-endian float64 in [ext1_min, ext1_max] (the timestamps that
 *   datetime accepts, computed by the caller); ext 2: 16 bytes; ext -1 (msgpack's own
 *   timestamp, which msgspec decodes): 4, 8 or 12 bytes, nanoseconds below 10^9 and the
 *   instant within years 1-9999; any other ext type: any payload;
 * - map keys that Python can hash: not a map, not an ext of another type, and arrays
 *   used as keys hold only such values.
 *
 * `find_str_key(data, key)` returns the (start, end) offsets of the value of the last
 * entry of the top-level map whose key is the str `key`, or None; `prune(data, keep)`
 * returns the top-level map without the entries whose key is a str not in `keep` (what
 * the typed decoder would skip, at a cost of its own). Both need `data` to have passed
 * `check`, and release the GIL while they walk it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_BYTES 1048576u
#define MAX_ARRAY 131072u
#define MAX_MAP 32768u
#define MAX_DEPTH 512

/* msgspec's range for msgpack timestamps: 0001-01-01T00:00:00 to 9999-12-31T23:59:59.999999
 * after rounding nanoseconds half up to microseconds. */
#define TS_MIN_SECONDS (-62135596800LL)
#define TS_MAX_SECONDS 253402300799LL
#define TS_MAX_NANOS_AT_MAX 999999499u

typedef struct {
    uint32_t remaining; /* values still to read; a map counts its keys and values */
    uint8_t is_map;
    uint8_t in_key;     /* the container is (inside) a map key: its items must be hashable */
} Frame;

/* Bytes that are a whole value by themselves and need no check: fixints, nil, booleans,
 * empty str, empty array and empty map (the latter only outside map keys). */
static uint8_t single_byte_value[256];

static void init_single_byte_values(void) {
    for (int b = 0; b < 256; b++) {
        single_byte_value[b] = b <= 0x80 || b == 0x90 || b == 0xA0 || b == 0xC0 || b == 0xC2 ||
                               b == 0xC3 || b >= 0xE0;
    }
}

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t be64(const uint8_t *p) {
    return ((uint64_t)be32(p) << 32) | be32(p + 4);
}

static int utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        while (i + 8 <= n) {
            uint64_t word;
            memcpy(&word, s + i, 8);
            if (word & 0x8080808080808080ULL) {
                break;
            }
            i += 8;
        }
        if (i >= n) {
            return 1;
        }
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
        } else if (c < 0xC2) {
            return 0; /* continuation byte first, or an overlong 2-byte form */
        } else if (c < 0xE0) {
            if (n - i < 2 || (s[i + 1] & 0xC0) != 0x80) {
                return 0;
            }
            i += 2;
        } else if (c < 0xF0) {
            if (n - i < 3 || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80) {
                return 0;
            }
            if ((c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] > 0x9F)) {
                return 0; /* overlong, or a UTF-16 surrogate */
            }
            i += 3;
        } else if (c < 0xF5) {
            if (n - i < 4 || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 ||
                (s[i + 3] & 0xC0) != 0x80) {
                return 0;
            }
            if ((c == 0xF0 && s[i + 1] < 0x90) || (c == 0xF4 && s[i + 1] > 0x8F)) {
                return 0; /* overlong, or above U+10FFFF */
            }
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* NULL when the ext payload is acceptable, else the problem. */
static const char *check_ext(int8_t type, const uint8_t *p, uint32_t n, int in_key,
                             double ext1_min, double ext1_max) {
    if (type == 1) {
        if (n != 8) {
            return "timestamp extension must be 8 bytes";
        }
        uint64_t bits = be64(p);
        double value;
        memcpy(&value, &bits, 8);
        if (!(value >= ext1_min && value <= ext1_max)) { /* NaN fails both */
            return "timestamp out of range";
        }
        return NULL;
    }
    if (type == 2) {
        return n == 16 ? NULL : "UUID extension must be 16 bytes";
    }
    if (type == -1) {
        if (n == 4) {
            return NULL;
        }
        if (n == 8) {
            return (be64(p) >> 34) <= 999999999u ? NULL : "msgpack timestamp nanoseconds";
        }
        if (n == 12) {
            uint32_t nanos = be32(p);
            int64_t seconds = (int64_t)be64(p + 4);
            if (nanos > 999999999u) {
                return "msgpack timestamp nanoseconds";
            }
            if (seconds < TS_MIN_SECONDS || seconds > TS_MAX_SECONDS ||
                (seconds == TS_MAX_SECONDS && nanos > TS_MAX_NANOS_AT_MAX)) {
                return "msgpack timestamp out of range";
            }
            return NULL;
        }
        return "msgpack timestamp length";
    }
    return in_key ? "unhashable map key (ext)" : NULL;
}

typedef struct {
    const char *what;  /* NULL: valid */
    Py_ssize_t offset; /* where the problem is */
    int over_budget;   /* stopped early: the budget of steps ran out */
} Outcome;

/* Bytes of a one-byte-item run counted as one step (such runs cost ~0.5 ns a byte). */
#define RUN_BYTES_PER_STEP 16

#define FAIL(message, at)                                                               \
    do {                                                                                \
        out->what = (message);                                                          \
        out->offset = (Py_ssize_t)((at) - start);                                       \
        return;                                                                         \
    } while (0)

#define NEED(k)                                                                         \
    do {                                                                                \
        if ((size_t)(end - p) < (size_t)(k)) {                                          \
            FAIL("truncated", p);                                                       \
        }                                                                               \
    } while (0)

/* No Python API in here: it runs without the GIL when the caller releases it.
 * budget: steps (about one per value) before giving up with over_budget; 0 = no limit. */
static void scan(const uint8_t *const start, const uint8_t *const end, double ext1_min,
                 double ext1_max, uint64_t budget, Outcome *out) {
    const uint8_t *p = start;
    Frame stack[MAX_DEPTH];
    int depth = 0;
    uint64_t steps = 0;
    out->what = NULL;
    out->offset = 0;
    out->over_budget = 0;

    for (;;) {
        int in_key = 0;
        if (depth > 0) {
            Frame *top = &stack[depth - 1];
            if (!top->is_map && !top->in_key) {
                /* Fast path: a run of one-byte items of an array (the cheapest values to
                 * send, so the most numerous a hostile message can hold). */
                uint32_t remaining = top->remaining;
                const uint8_t *run_start = p;
                while (remaining > 0 && p < end && single_byte_value[*p]) {
                    p++;
                    remaining--;
                }
                top->remaining = remaining;
                steps += (uint64_t)(p - run_start) / RUN_BYTES_PER_STEP;
                if (remaining == 0) {
                    depth--; /* the array is complete: it counts for its own container */
                    goto value_done;
                }
            }
            in_key = top->in_key || (top->is_map && (top->remaining & 1u) == 0);
        }
        if (budget != 0 && ++steps > budget) {
            out->over_budget = 1;
            return;
        }
        /* One value starts at p. */
        const uint8_t *value_start = p;
        NEED(1);
        uint8_t b = *p++;
        uint32_t len = 0;
        uint32_t count = 0;
        int kind; /* 0 scalar done, 1 str, 2 bin, 3 ext, 4 array, 5 map */
        int8_t ext_type = 0;

        if (b <= 0x7F || b >= 0xE0) {
            kind = 0;
        } else if (b <= 0x8F) {
            kind = 5;
            count = b & 0x0F;
        } else if (b <= 0x9F) {
            kind = 4;
            count = b & 0x0F;
        } else if (b <= 0xBF) {
            kind = 1;
            len = b & 0x1F;
        } else {
            switch (b) {
            case 0xC0: case 0xC2: case 0xC3:
                kind = 0;
                break;
            case 0xC4: NEED(1); len = p[0]; p += 1; kind = 2; break;
            case 0xC5: NEED(2); len = be16(p); p += 2; kind = 2; break;
            case 0xC6: NEED(4); len = be32(p); p += 4; kind = 2; break;
            case 0xC7: NEED(2); len = p[0]; ext_type = (int8_t)p[1]; p += 2; kind = 3; break;
            case 0xC8: NEED(3); len = be16(p); ext_type = (int8_t)p[2]; p += 3; kind = 3; break;
            case 0xC9: NEED(5); len = be32(p); ext_type = (int8_t)p[4]; p += 5; kind = 3; break;
            case 0xCA: NEED(4); p += 4; kind = 0; break;
            case 0xCB: NEED(8); p += 8; kind = 0; break;
            case 0xCC: case 0xD0: NEED(1); p += 1; kind = 0; break;
            case 0xCD: case 0xD1: NEED(2); p += 2; kind = 0; break;
            case 0xCE: case 0xD2: NEED(4); p += 4; kind = 0; break;
            case 0xCF: case 0xD3: NEED(8); p += 8; kind = 0; break;
            case 0xD4: NEED(1); len = 1; ext_type = (int8_t)p[0]; p += 1; kind = 3; break;
            case 0xD5: NEED(1); len = 2; ext_type = (int8_t)p[0]; p += 1; kind = 3; break;
            case 0xD6: NEED(1); len = 4; ext_type = (int8_t)p[0]; p += 1; kind = 3; break;
            case 0xD7: NEED(1); len = 8; ext_type = (int8_t)p[0]; p += 1; kind = 3; break;
            case 0xD8: NEED(1); len = 16; ext_type = (int8_t)p[0]; p += 1; kind = 3; break;
            case 0xD9: NEED(1); len = p[0]; p += 1; kind = 1; break;
            case 0xDA: NEED(2); len = be16(p); p += 2; kind = 1; break;
            case 0xDB: NEED(4); len = be32(p); p += 4; kind = 1; break;
            case 0xDC: NEED(2); count = be16(p); p += 2; kind = 4; break;
            case 0xDD: NEED(4); count = be32(p); p += 4; kind = 4; break;
            case 0xDE: NEED(2); count = be16(p); p += 2; kind = 5; break;
            case 0xDF: NEED(4); count = be32(p); p += 4; kind = 5; break;
            default: /* 0xC1 */
                FAIL("invalid msgpack byte", value_start);
            }
        }

        if (kind == 1 || kind == 2 || kind == 3) {
            if (len > MAX_BYTES) {
                FAIL(kind == 1   ? "str over the size limit"
                     : kind == 2 ? "bin over the size limit"
                                 : "ext over the size limit",
                     value_start);
            }
            NEED(len);
            if (kind == 1 && !utf8_valid(p, len)) {
                FAIL("invalid UTF-8", value_start);
            }
            if (kind == 3) {
                const char *bad = check_ext(ext_type, p, len, in_key, ext1_min, ext1_max);
                if (bad != NULL) {
                    FAIL(bad, value_start);
                }
            }
            p += len;
        } else if (kind == 4 || kind == 5) {
            if (kind == 4 && count > MAX_ARRAY) {
                FAIL("array over the size limit", value_start);
            }
            if (kind == 5) {
                if (count > MAX_MAP) {
                    FAIL("map over the size limit", value_start);
                }
                if (in_key) {
                    FAIL("unhashable map key (map)", value_start);
                }
            }
            if (count > 0) {
                if (depth == MAX_DEPTH) {
                    FAIL("nested too deeply", value_start);
                }
                stack[depth].remaining = kind == 5 ? 2 * count : count;
                stack[depth].is_map = kind == 5;
                stack[depth].in_key = (uint8_t)in_key;
                depth++;
                continue; /* read its first item */
            }
        }

    value_done:
        /* A value is complete: it counts for its container, which may complete too. */
        while (depth > 0 && --stack[depth - 1].remaining == 0) {
            depth--;
        }
        if (depth == 0) {
            break;
        }
    }
    if (p != end) {
        FAIL("trailing bytes", p);
    }
}
#undef NEED
#undef FAIL

static PyObject *msgcheck_check(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "check(data: bytes, ext1_min: float, ext1_max: float, budget: int)");
        return NULL;
    }
    double ext1_min = PyFloat_AsDouble(args[1]);
    double ext1_max = PyFloat_AsDouble(args[2]);
    unsigned long long budget = PyLong_AsUnsignedLongLong(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    const uint8_t *start = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    const uint8_t *end = start + PyBytes_GET_SIZE(args[0]);
    Outcome out;
    if (budget == 0) {
        /* Unlimited: the caller runs it off the event loop; the bytes object is immutable
         * and referenced by our arguments, so other threads may run meanwhile. */
        Py_BEGIN_ALLOW_THREADS
        scan(start, end, ext1_min, ext1_max, 0, &out);
        Py_END_ALLOW_THREADS
    } else {
        scan(start, end, ext1_min, ext1_max, budget, &out);
    }
    if (out.over_budget) {
        Py_RETURN_FALSE;
    }
    if (out.what != NULL) {
        return PyUnicode_FromFormat("%s (byte %zd)", out.what, out.offset);
    }
    Py_RETURN_NONE;
}

/* Where the value starting at p ends; data already checked, so only lengths matter. */
static const uint8_t *skip_value(const uint8_t *p) {
    uint64_t pending = 1; /* values still to skip */
    while (pending > 0) {
        uint8_t b = *p++;
        pending--;
        if (b <= 0x7F || b >= 0xE0 || b == 0xC0 || b == 0xC2 || b == 0xC3) {
            continue;
        }
        if (b <= 0x8F) {
            pending += 2u * (b & 0x0F);
        } else if (b <= 0x9F) {
            pending += b & 0x0F;
        } else if (b <= 0xBF) {
            p += b & 0x1F;
        } else {
            switch (b) {
            case 0xC4: p += 1 + p[0]; break;
            case 0xC5: p += 2 + be16(p); break;
            case 0xC6: p += 4 + (size_t)be32(p); break;
            case 0xC7: p += 2 + p[0]; break;
            case 0xC8: p += 3 + be16(p); break;
            case 0xC9: p += 5 + (size_t)be32(p); break;
            case 0xCA: case 0xCE: case 0xD2: p += 4; break;
            case 0xCB: case 0xCF: case 0xD3: p += 8; break;
            case 0xCC: case 0xD0: p += 1; break;
            case 0xCD: case 0xD1: p += 2; break;
            case 0xD4: p += 2; break;
            case 0xD5: p += 3; break;
            case 0xD6: p += 5; break;
            case 0xD7: p += 9; break;
            case 0xD8: p += 17; break;
            case 0xD9: p += 1 + p[0]; break;
            case 0xDA: p += 2 + be16(p); break;
            case 0xDB: p += 4 + (size_t)be32(p); break;
            case 0xDC: pending += be16(p); p += 2; break;
            case 0xDD: pending += be32(p); p += 4; break;
            case 0xDE: pending += 2u * be16(p); p += 2; break;
            case 0xDF: pending += 2u * (uint64_t)be32(p); p += 4; break;
            default: break;
            }
        }
    }
    return p;
}

/* The payload of a str value starting at p (and its length), or NULL if not a str. */
static const uint8_t *str_payload(const uint8_t *p, size_t *n) {
    if (p[0] >= 0xA0 && p[0] <= 0xBF) {
        *n = p[0] & 0x1F;
        return p + 1;
    }
    switch (p[0]) {
    case 0xD9: *n = p[1]; return p + 2;
    case 0xDA: *n = be16(p + 1); return p + 3;
    case 0xDB: *n = be32(p + 1); return p + 5;
    default: *n = 0; return NULL;
    }
}

/* The number of entries of the map starting at *p (moved past its header), or -1. */
static int64_t map_header(const uint8_t **p, const uint8_t *end) {
    if (*p >= end) {
        return -1;
    }
    uint8_t b = *(*p)++;
    if (b >= 0x80 && b <= 0x8F) {
        return b & 0x0F;
    }
    if (b == 0xDE) {
        *p += 2;
        return be16(*p - 2);
    }
    if (b == 0xDF) {
        *p += 4;
        return be32(*p - 4);
    }
    return -1;
}

static PyObject *msgcheck_find_str_key(PyObject *module, PyObject *const *args,
                                       Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "find_str_key(data: bytes, key: bytes)");
        return NULL;
    }
    const uint8_t *const start = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    const uint8_t *p = start;
    const char *key = PyBytes_AS_STRING(args[1]);
    size_t key_len = (size_t)PyBytes_GET_SIZE(args[1]);
    int64_t entries = map_header(&p, start + PyBytes_GET_SIZE(args[0]));
    if (entries < 0) {
        Py_RETURN_NONE;
    }
    Py_ssize_t found_start = -1, found_end = -1;
    Py_BEGIN_ALLOW_THREADS /* the walk may be long; the bytes are immutable and ours */
    for (int64_t i = 0; i < entries; i++) {
        const uint8_t *k = p;
        const uint8_t *value = skip_value(p);
        size_t n;
        const uint8_t *text = str_payload(k, &n);
        p = skip_value(value);
        if (text != NULL && n == key_len && memcmp(text, key, n) == 0) {
            found_start = value - start;
            found_end = p - start;
        }
    }
    Py_END_ALLOW_THREADS
    if (found_start < 0) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(nn)", found_start, found_end);
}

#define MAX_KEEP 64

static PyObject *msgcheck_prune(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyTuple_Check(args[1]) ||
        PyTuple_GET_SIZE(args[1]) > MAX_KEEP) {
        PyErr_SetString(PyExc_TypeError, "prune(data: bytes, keep: tuple[bytes, ...])");
        return NULL;
    }
    const char *keep[MAX_KEEP];
    size_t keep_len[MAX_KEEP];
    Py_ssize_t keep_count = PyTuple_GET_SIZE(args[1]);
    for (Py_ssize_t i = 0; i < keep_count; i++) {
        PyObject *item = PyTuple_GET_ITEM(args[1], i);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "prune: keys must be bytes");
            return NULL;
        }
        keep[i] = PyBytes_AS_STRING(item);
        keep_len[i] = (size_t)PyBytes_GET_SIZE(item);
    }
    const uint8_t *const start = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    const uint8_t *p = start;
    int64_t entries = map_header(&p, start + PyBytes_GET_SIZE(args[0]));
    if (entries < 0) {
        return Py_NewRef(args[0]);
    }
    /* (start, end) of each entry kept; at most MAX_MAP entries in a checked message. */
    Py_ssize_t *spans = PyMem_RawMalloc(sizeof(Py_ssize_t) * 2 * (size_t)(entries + 1));
    if (spans == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t kept = 0, size = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t i = 0; i < entries; i++) {
        const uint8_t *entry = p;
        size_t n;
        const uint8_t *text = str_payload(entry, &n);
        p = skip_value(skip_value(p));
        int wanted = text == NULL; /* a key that is not a str: the decoder reports it */
        for (Py_ssize_t j = 0; !wanted && j < keep_count; j++) {
            wanted = n == keep_len[j] && memcmp(text, keep[j], n) == 0;
        }
        if (wanted) {
            spans[2 * kept] = entry - start;
            spans[2 * kept + 1] = p - start;
            size += p - entry;
            kept++;
        }
    }
    Py_END_ALLOW_THREADS
    PyObject *out = PyBytes_FromStringAndSize(NULL, 5 + size);
    if (out == NULL) {
        PyMem_RawFree(spans);
        return NULL;
    }
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    Py_ssize_t header;
    if (kept <= 15) {
        o[0] = (uint8_t)(0x80 | kept);
        header = 1;
    } else if (kept <= 0xFFFF) {
        o[0] = 0xDE;
        o[1] = (uint8_t)(kept >> 8);
        o[2] = (uint8_t)kept;
        header = 3;
    } else {
        o[0] = 0xDF;
        o[1] = (uint8_t)(kept >> 24);
        o[2] = (uint8_t)(kept >> 16);
        o[3] = (uint8_t)(kept >> 8);
        o[4] = (uint8_t)kept;
        header = 5;
    }
    Py_ssize_t at = header;
    for (Py_ssize_t i = 0; i < kept; i++) {
        Py_ssize_t length = spans[2 * i + 1] - spans[2 * i];
        memcpy(o + at, start + spans[2 * i], (size_t)length);
        at += length;
    }
    PyMem_RawFree(spans);
    if (_PyBytes_Resize(&out, at) < 0) {
        return NULL;
    }
    return out;
}

static PyMethodDef msgcheck_methods[] = {
    {"check", (PyCFunction)(void (*)(void))msgcheck_check, METH_FASTCALL,
     "check(data, ext1_min, ext1_max, budget) -> None if valid, the problem found, or False "
     "if more than `budget` steps were needed (0: no limit, the GIL released meanwhile)."},
    {"find_str_key", (PyCFunction)(void (*)(void))msgcheck_find_str_key, METH_FASTCALL,
     "find_str_key(data, key) -> (start, end) of the value of `key` in the top-level map."},
    {"prune", (PyCFunction)(void (*)(void))msgcheck_prune, METH_FASTCALL,
     "prune(data, keep) -> the top-level map without the entries whose key is a str not "
     "in `keep`."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef msgcheck_module = {
    PyModuleDef_HEAD_INIT, "_msgcheck", "Allocation-free validation of protocol msgpack.",
    -1, msgcheck_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__msgcheck(void) {
    init_single_byte_values();
    PyObject *m = PyModule_Create(&msgcheck_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MAX_BYTES", MAX_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "MAX_ARRAY_LENGTH", MAX_ARRAY) < 0 ||
        PyModule_AddIntConstant(m, "MAX_MAP_LENGTH", MAX_MAP) < 0 ||
        PyModule_AddIntConstant(m, "MAX_DEPTH", MAX_DEPTH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
