/* The degree-capped merge of co-interaction pairs into an item's adjacency, in C.
 *
 * The same function as models.graph.merge_neighbours_reference (the pure-Python definition, kept as the test
 * oracle): for each (dst, dst_type, ts) triple of `flat` from index `start`, in order, an existing neighbour gains
 * one co-count and keeps the later of the two times; a new one enters as [dst_type, 1, ts], and when the adjacency
 * then holds 2 * max_degree neighbours it is pruned to the max_degree with the highest (weight, last_ts, item_id),
 * rebuilt heaviest first. Why C: this is the edges agent's hot loop (37 pairs per event) and its prune ranks 200
 * neighbours every ~100 new ones; in Python they took about half of the stream worker's CPU.
 *
 * Ranking is Python's own order on (weight, ts, dst) tuples. A fast path compares C values when every weight is an
 * int that fits a long long, every ts a float that is not NaN or an int exactly representable as a double
 * (|ts| < 2**53), and every dst an exact str: then the C comparison is the Python one. Anything else is ranked by
 * Python's list.sort on the same tuples, so the result never depends on which path ran.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    long long weight;
    double ts;
    PyObject *key;   /* borrowed from the adjacency; prune takes its own references to the kept ones */
    PyObject *value;
} Row;

/* 1 when a ranks above b, 0 when below (never equal: keys are distinct). */
static int ranks_above(const Row *a, const Row *b) {
    if (a->weight != b->weight) return a->weight > b->weight;
    if (a->ts != b->ts) return a->ts > b->ts;
    return PyUnicode_Compare(a->key, b->key) > 0;
}

/* Stable merge sort, heaviest first: no reliance on qsort with a comparator that calls into Python. */
static void sort_rows(Row *rows, Row *tmp, Py_ssize_t n) {
    for (Py_ssize_t width = 1; width < n; width *= 2) {
        for (Py_ssize_t lo = 0; lo < n; lo += 2 * width) {
            Py_ssize_t mid = lo + width < n ? lo + width : n;
            Py_ssize_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            Py_ssize_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) tmp[k++] = ranks_above(&rows[j], &rows[i]) ? rows[j++] : rows[i++];
            while (i < mid) tmp[k++] = rows[i++];
            while (j < hi) tmp[k++] = rows[j++];
        }
        memcpy(rows, tmp, (size_t)n * sizeof(Row));
    }
}

/* The C value of a number for the fast path; 0 when it has none (then Python ranks). */
static int as_double(PyObject *x, double *out) {
    if (PyFloat_CheckExact(x)) {
        *out = PyFloat_AS_DOUBLE(x);
        return !isnan(*out);
    }
    if (PyLong_CheckExact(x)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(x, &overflow);
        if (overflow) return 0;
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        if (v > (1LL << 53) || v < -(1LL << 53)) return 0;
        *out = (double)v; /* exact: Python's int-float comparison is exact, so is this one */
        return 1;
    }
    return 0;
}

/* Ranked with Python's own tuple order: (weight, ts, dst, value) rows, heaviest first (dst never ties). */
static PyObject *ranked_by_python(PyObject *adjacency) {
    PyObject *rows = PyList_New(0);
    if (rows == NULL) return NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(adjacency, &pos, &key, &value)) {
        PyObject *weight = PySequence_GetItem(value, 1);
        PyObject *ts = weight ? PySequence_GetItem(value, 2) : NULL;
        PyObject *row = ts ? PyTuple_Pack(4, weight, ts, key, value) : NULL;
        Py_XDECREF(weight);
        Py_XDECREF(ts);
        if (row == NULL || PyList_Append(rows, row) < 0) {
            Py_XDECREF(row);
            Py_DECREF(rows);
            return NULL;
        }
        Py_DECREF(row);
    }
    /* rows.sort(reverse=True), as the reference sorts: the same order even where the order is not total (a NaN) */
    PyObject *sort = PyObject_GetAttrString(rows, "sort");
    PyObject *no_args = sort ? PyTuple_New(0) : NULL;
    PyObject *reverse = no_args ? Py_BuildValue("{s:O}", "reverse", Py_True) : NULL;
    PyObject *done = reverse ? PyObject_Call(sort, no_args, reverse) : NULL;
    Py_XDECREF(sort);
    Py_XDECREF(no_args);
    Py_XDECREF(reverse);
    if (done == NULL) {
        Py_DECREF(rows);
        return NULL;
    }
    Py_DECREF(done);
    return rows;
}

static int prune(PyObject *adjacency, Py_ssize_t max_degree) {
    Py_ssize_t n = PyDict_GET_SIZE(adjacency);
    Row *rows = PyMem_Malloc(2 * (size_t)n * sizeof(Row));
    if (rows == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int fast = 1;
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    while (PyDict_Next(adjacency, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key) || !PyList_CheckExact(value) || PyList_GET_SIZE(value) < 3) {
            fast = 0;
            break;
        }
        PyObject *weight = PyList_GET_ITEM(value, 1);
        int overflow = 0;
        long long w = PyLong_CheckExact(weight) ? PyLong_AsLongLongAndOverflow(weight, &overflow) : 0;
        if (!PyLong_CheckExact(weight) || overflow || (w == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            fast = 0;
            break;
        }
        rows[i].weight = w;
        if (!as_double(PyList_GET_ITEM(value, 2), &rows[i].ts)) {
            fast = 0;
            break;
        }
        rows[i].key = key;
        rows[i].value = value;
        i++;
    }
    Py_ssize_t keep = max_degree < n ? max_degree : n;
    PyObject **kept_keys = PyMem_Malloc(2 * (size_t)(keep > 0 ? keep : 1) * sizeof(PyObject *));
    if (kept_keys == NULL) {
        PyMem_Free(rows);
        PyErr_NoMemory();
        return -1;
    }
    PyObject **kept_values = kept_keys + keep;
    if (fast) {
        sort_rows(rows, rows + n, n);
        for (Py_ssize_t k = 0; k < keep; k++) {
            kept_keys[k] = Py_NewRef(rows[k].key);
            kept_values[k] = Py_NewRef(rows[k].value);
        }
    } else {
        PyObject *ranked = ranked_by_python(adjacency);
        if (ranked == NULL) {
            PyMem_Free(kept_keys);
            PyMem_Free(rows);
            return -1;
        }
        for (Py_ssize_t k = 0; k < keep; k++) {
            PyObject *row = PyList_GET_ITEM(ranked, k);
            kept_keys[k] = Py_NewRef(PyTuple_GET_ITEM(row, 2));
            kept_values[k] = Py_NewRef(PyTuple_GET_ITEM(row, 3));
        }
        Py_DECREF(ranked);
    }
    PyMem_Free(rows);
    PyDict_Clear(adjacency);
    int status = 0;
    for (Py_ssize_t k = 0; k < keep; k++) {
        if (status == 0 && PyDict_SetItem(adjacency, kept_keys[k], kept_values[k]) < 0) status = -1;
        Py_DECREF(kept_keys[k]);
        Py_DECREF(kept_values[k]);
    }
    PyMem_Free(kept_keys);
    return status;
}

/* ts > current, as Python compares them. -1 on error. */
static int later(PyObject *ts, PyObject *current) {
    if (PyFloat_CheckExact(ts) && PyFloat_CheckExact(current))
        return PyFloat_AS_DOUBLE(ts) > PyFloat_AS_DOUBLE(current);
    return PyObject_RichCompareBool(ts, current, Py_GT);
}

/* entry[1] += 1; if ts > entry[2]: entry[2] = ts (a list fast; any sequence as Python would). `one` is both the
 * increment and the index 1. */
static int reinforce(PyObject *entry, PyObject *ts, PyObject *one, PyObject *index2) {
    if (PyList_CheckExact(entry) && PyList_GET_SIZE(entry) >= 3) {
        PyObject *weight = PyNumber_InPlaceAdd(PyList_GET_ITEM(entry, 1), one);
        if (weight == NULL) return -1;
        PyList_SetItem(entry, 1, weight); /* steals weight */
        if (PyList_GET_SIZE(entry) < 3) return 0;
        int gt = later(ts, PyList_GET_ITEM(entry, 2));
        if (gt < 0) return -1;
        if (gt && PyList_GET_SIZE(entry) >= 3) PyList_SetItem(entry, 2, Py_NewRef(ts));
        return 0;
    }
    PyObject *weight = PyObject_GetItem(entry, one);
    if (weight == NULL) return -1;
    PyObject *added = PyNumber_InPlaceAdd(weight, one);
    Py_DECREF(weight);
    if (added == NULL) return -1;
    int status = PyObject_SetItem(entry, one, added);
    Py_DECREF(added);
    if (status < 0) return -1;
    PyObject *current = PyObject_GetItem(entry, index2);
    if (current == NULL) return -1;
    int gt = PyObject_RichCompareBool(ts, current, Py_GT);
    Py_DECREF(current);
    if (gt < 0) return -1;
    return gt ? PyObject_SetItem(entry, index2, ts) : 0;
}

static PyObject *merge_neighbours(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs) {
    static char *names[] = {"adjacency", "flat", "max_degree", "start", NULL};
    PyObject *adjacency, *flat;
    Py_ssize_t max_degree, start = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!On|n:merge_neighbours", names, &PyDict_Type, &adjacency,
                                     &flat, &max_degree, &start))
        return NULL;
    if (max_degree < 1) {
        PyErr_Format(PyExc_ValueError, "max_degree must be at least 1, got %zd", max_degree);
        return NULL;
    }
    PyObject *seq = PySequence_Fast(flat, "flat must be a sequence of (dst, dst_type, ts) triples");
    if (seq == NULL) return NULL;
    Py_ssize_t cap = 2 * max_degree;
    if (start < 0) start = 0;
    PyObject *one = PyLong_FromLong(1), *index2 = PyLong_FromLong(2);
    if (one == NULL || index2 == NULL) goto fail;
    /* the size is read again each time: a comparison of exotic objects could run Python code */
    for (Py_ssize_t k = start; k + 3 <= PySequence_Fast_GET_SIZE(seq); k += 3) {
        PyObject **items = PySequence_Fast_ITEMS(seq);
        PyObject *dst = Py_NewRef(items[k]), *dst_type = Py_NewRef(items[k + 1]), *ts = Py_NewRef(items[k + 2]);
        int status;
        PyObject *entry = PyDict_GetItemWithError(adjacency, dst);
        if (entry != NULL) {
            Py_INCREF(entry);
            status = reinforce(entry, ts, one, index2);
            Py_DECREF(entry);
        } else if (PyErr_Occurred()) {
            status = -1;
        } else {
            PyObject *row = PyList_New(3);
            status = row == NULL ? -1 : 0;
            if (row != NULL) {
                PyList_SET_ITEM(row, 0, Py_NewRef(dst_type));
                PyList_SET_ITEM(row, 1, Py_NewRef(one));
                PyList_SET_ITEM(row, 2, Py_NewRef(ts));
                status = PyDict_SetItem(adjacency, dst, row);
                Py_DECREF(row);
            }
            if (status == 0 && PyDict_GET_SIZE(adjacency) >= cap) status = prune(adjacency, max_degree);
        }
        Py_DECREF(dst);
        Py_DECREF(dst_type);
        Py_DECREF(ts);
        if (status < 0) goto fail;
    }
    Py_DECREF(one);
    Py_DECREF(index2);
    Py_DECREF(seq);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(one);
    Py_XDECREF(index2);
    Py_DECREF(seq);
    return NULL;
}

/* well_typed_triples(flat, start): whether every (dst, dst_type, ts) from flat[start] on is (a non-empty str, a
 * non-empty str, an int or a float), exact types, read a column at a time as the slices flat[start::3],
 * flat[start+1::3] and flat[start+2::3] would be (a trailing partial triple included). */
static PyObject *well_typed_triples(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "well_typed_triples(flat: list, start: int)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    if (start < 0) start = 0;
    PyObject *flat = args[0];
    for (Py_ssize_t i = start; i < PyList_GET_SIZE(flat); i++) {
        PyObject *x = PyList_GET_ITEM(flat, i);
        if ((i - start) % 3 == 2) {
            if (!PyLong_CheckExact(x) && !PyFloat_CheckExact(x)) Py_RETURN_FALSE;
        } else if (!PyUnicode_CheckExact(x) || PyUnicode_GET_LENGTH(x) == 0) {
            Py_RETURN_FALSE;
        }
    }
    Py_RETURN_TRUE;
}

/* recent_items(recent, limit): the fast path of models.graph.recent_items (its definition is
 * recent_items_reference): every (item_id, item_type, ts) of recent = {item_type: [[item_id, ts, ...], ...]},
 * newest first, ties broken by the greater (item_id, item_type) first, as Python's sort of (ts, item_id, item_type)
 * tuples with reverse=True; the first `limit` (all for -1). None when the state is off the fast path (anything but
 * exact dicts, lists, str and finite-comparable numbers, see as_double): the caller then runs the reference. Hot in
 * the events agent (one call per consumption) and in the user tower's features. */
typedef struct {
    double ts;
    PyObject *ts_obj, *item, *type; /* borrowed from the state */
} Recent;

/* 1 when a sorts before b (newer, or equal times and a greater (item, type)). */
static int newer(const Recent *a, const Recent *b) {
    if (a->ts != b->ts) return a->ts > b->ts;
    int c = PyUnicode_Compare(a->item, b->item);
    if (c != 0) return c > 0;
    return PyUnicode_Compare(a->type, b->type) > 0;
}

static PyObject *recent_items(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "recent_items(recent: dict, limit: int)");
        return NULL;
    }
    PyObject *recent = args[0];
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    if (!PyDict_CheckExact(recent)) Py_RETURN_NONE;
    Py_ssize_t n = 0, pos = 0;
    PyObject *type, *rows;
    while (PyDict_Next(recent, &pos, &type, &rows)) {
        if (!PyUnicode_CheckExact(type) || !PyList_CheckExact(rows)) Py_RETURN_NONE;
        n += PyList_GET_SIZE(rows);
    }
    Recent *all = PyMem_Malloc(2 * (size_t)(n > 0 ? n : 1) * sizeof(Recent));
    if (all == NULL) return PyErr_NoMemory();
    Py_ssize_t i = 0;
    pos = 0;
    while (PyDict_Next(recent, &pos, &type, &rows)) {
        for (Py_ssize_t r = 0; r < PyList_GET_SIZE(rows) && i < n; r++) {
            PyObject *row = PyList_GET_ITEM(rows, r);
            if (!PyList_CheckExact(row) || PyList_GET_SIZE(row) < 2 || !PyUnicode_CheckExact(PyList_GET_ITEM(row, 0))
                || !as_double(PyList_GET_ITEM(row, 1), &all[i].ts)) {
                PyMem_Free(all);
                Py_RETURN_NONE;
            }
            all[i].item = PyList_GET_ITEM(row, 0);
            all[i].ts_obj = PyList_GET_ITEM(row, 1);
            all[i].type = type;
            i++;
        }
    }
    n = i;
    Recent *tmp = all + n;
    for (Py_ssize_t width = 1; width < n; width *= 2) { /* stable merge sort, newest first */
        for (Py_ssize_t lo = 0; lo < n; lo += 2 * width) {
            Py_ssize_t mid = lo + width < n ? lo + width : n;
            Py_ssize_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            Py_ssize_t a = lo, b = mid, k = lo;
            while (a < mid && b < hi) tmp[k++] = newer(&all[b], &all[a]) ? all[b++] : all[a++];
            while (a < mid) tmp[k++] = all[a++];
            while (b < hi) tmp[k++] = all[b++];
        }
        memcpy(all, tmp, (size_t)n * sizeof(Recent));
    }
    Py_ssize_t keep = limit >= 0 && limit < n ? limit : n;
    PyObject *out = PyList_New(keep);
    for (Py_ssize_t k = 0; out != NULL && k < keep; k++) {
        PyObject *t = PyTuple_Pack(3, all[k].item, all[k].type, all[k].ts_obj);
        if (t == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, k, t);
    }
    PyMem_Free(all);
    return out;
}

/* The binary pairs message's body (see streams.agents.pack_pairs): one 16-byte record per pair, (u32 dst, u32 type,
 * f64 ts), little-endian, dst and type indexes into the message's table of strings. */
#define PAIR_RECORD 16

static void put_u32(unsigned char *p, unsigned long v) {
    p[0] = (unsigned char)(v & 0xff);
    p[1] = (unsigned char)((v >> 8) & 0xff);
    p[2] = (unsigned char)((v >> 16) & 0xff);
    p[3] = (unsigned char)((v >> 24) & 0xff);
}

static unsigned long get_u32(const unsigned char *p) {
    return (unsigned long)p[0] | ((unsigned long)p[1] << 8) | ((unsigned long)p[2] << 16) | ((unsigned long)p[3] << 24);
}

/* The index of `s` in the table (`index`: str -> int, `strings`: the list), added when new; -1 on error. */
static Py_ssize_t string_index(PyObject *index, PyObject *strings, PyObject *s) {
    if (!PyUnicode_CheckExact(s)) {
        PyErr_Format(PyExc_TypeError, "pack_groups: item ids and types must be str, got %.50s", Py_TYPE(s)->tp_name);
        return -1;
    }
    PyObject *found = PyDict_GetItemWithError(index, s);
    if (found != NULL) return PyLong_AsSsize_t(found);
    if (PyErr_Occurred()) return -1;
    Py_ssize_t k = PyList_GET_SIZE(strings);
    PyObject *number = PyLong_FromSsize_t(k);
    if (number == NULL) return -1;
    int status = PyDict_SetItem(index, s, number);
    Py_DECREF(number);
    if (status < 0 || PyList_Append(strings, s) < 0) return -1;
    return k;
}

/* pack_groups(groups) -> (strings, meta, body): pair groups [src, src_type, partition, offset, consumed,
 * (dst, dst_type, ts)*] as a table of strings, one [src, src_type, partition, offset, consumed, pairs] row per group
 * (src and src_type as indexes) and the pairs' records. */
static PyObject *pack_groups(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 1 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "pack_groups(groups: list)");
        return NULL;
    }
    PyObject *groups = args[0];
    Py_ssize_t n_groups = PyList_GET_SIZE(groups), total = 0;
    for (Py_ssize_t g = 0; g < n_groups; g++) {
        PyObject *group = PyList_GET_ITEM(groups, g);
        if (!PyList_Check(group) || PyList_GET_SIZE(group) < 5 || (PyList_GET_SIZE(group) - 5) % 3) {
            PyErr_SetString(PyExc_ValueError, "pack_groups: a group is [src, src_type, partition, offset, consumed, "
                                              "(dst, dst_type, ts)*]");
            return NULL;
        }
        total += (PyList_GET_SIZE(group) - 5) / 3;
    }
    PyObject *index = PyDict_New(), *strings = PyList_New(0), *meta = PyList_New(n_groups);
    PyObject *body = PyBytes_FromStringAndSize(NULL, total * PAIR_RECORD);
    if (index == NULL || strings == NULL || meta == NULL || body == NULL) goto fail;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(body);
    for (Py_ssize_t g = 0; g < n_groups; g++) {
        PyObject *group = PyList_GET_ITEM(groups, g);
        Py_ssize_t size = PyList_GET_SIZE(group); /* as counted above: nothing below runs Python code */
        Py_ssize_t src = string_index(index, strings, PyList_GET_ITEM(group, 0));
        Py_ssize_t src_type = src < 0 ? -1 : string_index(index, strings, PyList_GET_ITEM(group, 1));
        if (src_type < 0) goto fail;
        PyObject *row = Py_BuildValue("[nnOOOn]", src, src_type, PyList_GET_ITEM(group, 2), PyList_GET_ITEM(group, 3),
                                      PyList_GET_ITEM(group, 4), (size - 5) / 3);
        if (row == NULL) goto fail;
        PyList_SET_ITEM(meta, g, row);
        for (Py_ssize_t k = 5; k + 3 <= size; k += 3) {
            Py_ssize_t dst = string_index(index, strings, PyList_GET_ITEM(group, k));
            Py_ssize_t dst_type = dst < 0 ? -1 : string_index(index, strings, PyList_GET_ITEM(group, k + 1));
            if (dst_type < 0) goto fail;
            if (dst > 0xffffffffL || dst_type > 0xffffffffL) {
                PyErr_SetString(PyExc_OverflowError, "pack_groups: more than 2**32 strings in one message");
                goto fail;
            }
            PyObject *time = PyList_GET_ITEM(group, k + 2);
            if (!PyFloat_CheckExact(time) && !PyLong_CheckExact(time)) { /* a __float__ could change the groups */
                PyErr_Format(PyExc_TypeError, "pack_groups: pair times must be float or int, got %.50s",
                             Py_TYPE(time)->tp_name);
                goto fail;
            }
            double ts = PyFloat_AsDouble(time);
            if (ts == -1.0 && PyErr_Occurred()) goto fail;
            put_u32(out, (unsigned long)dst);
            put_u32(out + 4, (unsigned long)dst_type);
            if (PyFloat_Pack8(ts, (char *)(out + 8), 1) < 0) goto fail;
            out += PAIR_RECORD;
        }
    }
    Py_DECREF(index);
    return Py_BuildValue("(NNN)", strings, meta, body);
fail:
    Py_XDECREF(index);
    Py_XDECREF(strings);
    Py_XDECREF(meta);
    Py_XDECREF(body);
    return NULL;
}

/* expand_groups(strings, meta, body) -> groups: what pack_groups packed, as the flat groups again (every id and
 * type the table's own str object, consecutive equal times one float object). ValueError naming what is wrong in a
 * message that was not packed by pack_groups; meta's partition, offset and consumed are the caller's to check. */
static PyObject *expand_groups(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "expand_groups(strings: list, meta: list, body: bytes)");
        return NULL;
    }
    PyObject *strings = args[0], *meta = args[1];
    Py_ssize_t n_strings = PyList_GET_SIZE(strings);
    for (Py_ssize_t k = 0; k < n_strings; k++) {
        PyObject *s = PyList_GET_ITEM(strings, k);
        if (!PyUnicode_CheckExact(s) || PyUnicode_GET_LENGTH(s) == 0) {
            PyErr_Format(PyExc_ValueError, "strings[%zd] is not a non-empty string", k);
            return NULL;
        }
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *in = view.buf;
    Py_ssize_t n_groups = PyList_GET_SIZE(meta), left = view.len / PAIR_RECORD;
    PyObject *groups = NULL, *last_ts = NULL;
    unsigned char last_bits[8];
    if (view.len % PAIR_RECORD) {
        PyErr_Format(PyExc_ValueError, "the pairs' records are %zd bytes, not a multiple of %d", view.len, PAIR_RECORD);
        goto fail;
    }
    groups = PyList_New(n_groups);
    if (groups == NULL) goto fail;
    for (Py_ssize_t g = 0; g < n_groups; g++) {
        PyObject *row = PyList_GET_ITEM(meta, g);
        if (!PyList_CheckExact(row) || PyList_GET_SIZE(row) != 6) {
            PyErr_Format(PyExc_ValueError, "group %zd: expected [src, src_type, partition, offset, consumed, pairs]", g);
            goto fail;
        }
        Py_ssize_t src = PyLong_CheckExact(PyList_GET_ITEM(row, 0)) ? PyLong_AsSsize_t(PyList_GET_ITEM(row, 0)) : -1;
        Py_ssize_t src_type = PyLong_CheckExact(PyList_GET_ITEM(row, 1)) ? PyLong_AsSsize_t(PyList_GET_ITEM(row, 1)) : -1;
        Py_ssize_t n = PyLong_CheckExact(PyList_GET_ITEM(row, 5)) ? PyLong_AsSsize_t(PyList_GET_ITEM(row, 5)) : -1;
        PyErr_Clear();
        if (src < 0 || src >= n_strings || src_type < 0 || src_type >= n_strings) {
            PyErr_Format(PyExc_ValueError, "group %zd: src and src_type must index the %zd strings", g, n_strings);
            goto fail;
        }
        if (n < 0 || n > left) {
            PyErr_Format(PyExc_ValueError, "group %zd: %zd pairs, but %zd records are left", g, n, left);
            goto fail;
        }
        PyObject *group = PyList_New(5 + 3 * n);
        if (group == NULL) goto fail;
        PyList_SET_ITEM(groups, g, group);
        PyList_SET_ITEM(group, 0, Py_NewRef(PyList_GET_ITEM(strings, src)));
        PyList_SET_ITEM(group, 1, Py_NewRef(PyList_GET_ITEM(strings, src_type)));
        for (int k = 2; k < 5; k++) PyList_SET_ITEM(group, k, Py_NewRef(PyList_GET_ITEM(row, k)));
        for (Py_ssize_t k = 0; k < n; k++, in += PAIR_RECORD) {
            unsigned long dst = get_u32(in), dst_type = get_u32(in + 4);
            if (dst >= (unsigned long)n_strings || dst_type >= (unsigned long)n_strings) {
                PyErr_Format(PyExc_ValueError, "group %zd, pair %zd: dst and dst_type must index the %zd strings", g,
                             k, n_strings);
                goto fail;
            }
            if (last_ts == NULL || memcmp(last_bits, in + 8, 8) != 0) {
                double ts = PyFloat_Unpack8((const char *)(in + 8), 1);
                if (ts == -1.0 && PyErr_Occurred()) goto fail;
                if (!isfinite(ts)) {
                    PyErr_Format(PyExc_ValueError, "group %zd, pair %zd: the time must be a finite number", g, k);
                    goto fail;
                }
                Py_XDECREF(last_ts);
                last_ts = PyFloat_FromDouble(ts);
                if (last_ts == NULL) goto fail;
                memcpy(last_bits, in + 8, 8);
            }
            PyList_SET_ITEM(group, 5 + 3 * k, Py_NewRef(PyList_GET_ITEM(strings, dst)));
            PyList_SET_ITEM(group, 6 + 3 * k, Py_NewRef(PyList_GET_ITEM(strings, dst_type)));
            PyList_SET_ITEM(group, 7 + 3 * k, Py_NewRef(last_ts));
        }
        left -= n;
    }
    if (left) {
        PyErr_Format(PyExc_ValueError, "%zd pair records belong to no group", left);
        goto fail;
    }
    Py_XDECREF(last_ts);
    PyBuffer_Release(&view);
    return groups;
fail:
    Py_XDECREF(last_ts);
    Py_XDECREF(groups);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"merge_neighbours", (PyCFunction)(void (*)(void))merge_neighbours, METH_VARARGS | METH_KEYWORDS,
     "merge_neighbours(adjacency, flat, max_degree, start=0)\n--\n\n"
     "Add the (dst, dst_type, ts) triples of flat[start:] to adjacency, in order, in place, under the degree rule "
     "(see models.graph)."},
    {"well_typed_triples", (PyCFunction)(void (*)(void))well_typed_triples, METH_FASTCALL,
     "well_typed_triples(flat, start)\n--\n\n"
     "Whether every (dst, dst_type, ts) of flat[start:] is (non-empty str, non-empty str, int or float)."},
    {"recent_items", (PyCFunction)(void (*)(void))recent_items, METH_FASTCALL,
     "recent_items(recent, limit)\n--\n\n"
     "A user's recent items, newest first (see models.graph.recent_items); None off the fast path."},
    {"pack_groups", (PyCFunction)(void (*)(void))pack_groups, METH_FASTCALL,
     "pack_groups(groups)\n--\n\n"
     "Pair groups as (strings, meta, body): the binary pairs message's parts (see streams.agents.pack_pairs)."},
    {"expand_groups", (PyCFunction)(void (*)(void))expand_groups, METH_FASTCALL,
     "expand_groups(strings, meta, body)\n--\n\n"
     "The pair groups that pack_groups packed; ValueError naming what is wrong."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "models._graphc",
                                    "The degree-capped merge of co-interaction pairs and the check of their triples, in C (see models.graph).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__graphc(void) { return PyModule_Create(&module); }
