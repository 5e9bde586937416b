/*
 * _core.c - the CPython extension of annstream: a thin layer over the public C API (annstream.h).
 *
 * Types (heap types, created per module with PyType_FromModuleAndSpec; none can be instantiated
 * from Python):
 *   Store    an open ans_store; read_frame, element, describe, close.
 *   Element  an open ans_element; read_rows, read_range, close.
 *   Rows     owns one ans_rows result; hands out Buffer objects over its buffers.
 *   Buffer   exports one buffer of a Rows or a Batch through the buffer protocol (zero-copy into
 *            numpy). It holds a strong reference to its owner, so the ans_rows is freed (the
 *            ans_batch released) only when the last numpy view of any of its buffers is gone.
 *   Loader   an ans_loader (made by loader()); next, set_epoch, seek, push_plan, end_plans, close.
 *   Batch    owns one ans_batch from a Loader; hands out Buffer objects over its buffers and
 *            calls ans_batch_release when it dies, so the loader never reuses memory still viewed.
 *
 * Concurrency: every call into the library that may do I/O or decode runs with the GIL released.
 * Store and Element objects count the calls in flight (`busy`, only ever touched with the GIL
 * held); close() marks the object closing, so that new calls raise ValueError, then waits (GIL
 * released) for the calls in flight to finish before freeing the handle.
 *
 * Errors: library status codes become Python exceptions (see raise_status); the message is
 * ans_error_last(), read on the thread that made the failing call, right after it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#include <windows.h>
#else
#include <time.h>
#include <unistd.h>
#endif

#include "annstream.h"

/* ---------------------------------------------------------------------------------------------- */
/* module state                                                                                    */

typedef struct {
    PyObject *FormatError;
    PyTypeObject *StoreType;
    PyTypeObject *ElementType;
    PyTypeObject *RowsType;
    PyTypeObject *BufferType;
    PyTypeObject *LoaderType;
    PyTypeObject *BatchType;
} module_state;

static struct PyModuleDef core_module;

static module_state *state_of_module(PyObject *module) {
    return (module_state *)PyModule_GetState(module);
}

/* State from an instance of one of this module's types. */
static module_state *state_of_type(PyTypeObject *type) {
    PyObject *module = PyType_GetModuleByDef(type, &core_module);
    if (module == NULL) {
        return NULL;
    }
    return state_of_module(module);
}

/* ---------------------------------------------------------------------------------------------- */
/* helpers                                                                                         */

static void sleep_briefly(void) {
#if defined(_WIN32)
    Sleep(1);
#else
    struct timespec ts = {0, 1000000L}; /* 1 ms */
    nanosleep(&ts, NULL);
#endif
}

/* Turn a failed status into a Python exception. `at_open` maps ANS_ENOTFOUND to FileNotFoundError
 * (naming `filename`), else to KeyError. Returns NULL. */
static PyObject *raise_status(module_state *st, int code, int at_open, PyObject *filename) {
    const char *msg = ans_error_last();
    if (msg == NULL || msg[0] == '\0') {
        msg = "annstream: unknown error";
    }
    PyObject *text = PyUnicode_DecodeUTF8(msg, (Py_ssize_t)strlen(msg), "replace");
    if (text == NULL) {
        return NULL;
    }
    PyObject *exc = NULL;
    switch (code) {
    case ANS_ECORRUPT:
    case ANS_EUNSUPPORTED:
        PyErr_SetObject(st->FormatError, text);
        break;
    case ANS_ENOTFOUND:
        if (at_open) {
            exc = PyObject_CallFunction(PyExc_FileNotFoundError, "iOO", ENOENT, text,
                                        filename != NULL ? filename : Py_None);
            if (exc != NULL) {
                PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
                Py_DECREF(exc);
            }
        } else {
            PyErr_SetObject(PyExc_KeyError, text);
        }
        break;
    case ANS_EINVAL:
        PyErr_SetObject(PyExc_ValueError, text);
        break;
    case ANS_ENOMEM:
        PyErr_SetObject(PyExc_MemoryError, text);
        break;
    case ANS_EIO:
        exc = PyObject_CallFunction(PyExc_OSError, "iO", EIO, text);
        if (exc != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
        break;
    default:
        PyErr_SetObject(PyExc_RuntimeError, text);
        break;
    }
    Py_DECREF(text);
    return NULL;
}

static PyObject *closed_error(const char *what) {
    PyErr_Format(PyExc_ValueError, "I/O operation on a closed annstream %s", what);
    return NULL;
}

static const char *format_name(ans_format f) {
    switch (f) {
    case ANS_FORMAT_DENSE:
        return "dense";
    case ANS_FORMAT_CSR:
        return "csr";
    case ANS_FORMAT_CSC:
        return "csc";
    }
    return "unknown";
}

static PyObject *shape_tuple(const uint64_t *shape, int ndim) {
    if (ndim < 0) {
        ndim = 0;
    }
    PyObject *t = PyTuple_New(ndim);
    if (t == NULL) {
        return NULL;
    }
    for (int i = 0; i < ndim; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong((unsigned long long)shape[i]);
        if (v == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

/* ---------------------------------------------------------------------------------------------- */
/* Buffer                                                                                          */

typedef struct {
    PyObject_HEAD
    PyObject *owner; /* keeps the memory alive (a Rows) */
    void *ptr;
    Py_ssize_t len;
} BufferObject;

static char empty_buffer[1];

static int Buffer_getbuffer(PyObject *op, Py_buffer *view, int flags) {
    BufferObject *self = (BufferObject *)op;
    void *ptr = self->ptr != NULL ? self->ptr : (void *)empty_buffer;
    return PyBuffer_FillInfo(view, op, ptr, self->len, 0, flags);
}

static void Buffer_dealloc(PyObject *op) {
    BufferObject *self = (BufferObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    Py_CLEAR(self->owner);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *Buffer_get_nbytes(PyObject *op, void *closure) {
    (void)closure;
    return PyLong_FromSsize_t(((BufferObject *)op)->len);
}

static PyObject *Buffer_get_owner(PyObject *op, void *closure) {
    (void)closure;
    return Py_NewRef(((BufferObject *)op)->owner);
}

static PyGetSetDef Buffer_getset[] = {
    {"nbytes", Buffer_get_nbytes, NULL, "Size of the buffer in bytes.", NULL},
    {"owner", Buffer_get_owner, NULL, "The object owning the memory.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Buffer_slots[] = {
    {Py_tp_doc, (void *)"A writable byte buffer over memory owned by annstream (zero-copy)."},
    {Py_tp_dealloc, (void *)Buffer_dealloc},
    {Py_tp_getset, (void *)Buffer_getset},
    {Py_bf_getbuffer, (void *)Buffer_getbuffer},
    {0, NULL},
};

static PyType_Spec Buffer_spec = {
    .name = "annstream._core.Buffer",
    .basicsize = sizeof(BufferObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Buffer_slots,
};

static PyObject *buffer_new(module_state *st, PyObject *owner, void *ptr, Py_ssize_t len) {
    BufferObject *b = (BufferObject *)PyType_GenericAlloc(st->BufferType, 0);
    if (b == NULL) {
        return NULL;
    }
    b->owner = Py_NewRef(owner);
    b->ptr = ptr;
    b->len = len;
    return (PyObject *)b;
}

/* ---------------------------------------------------------------------------------------------- */
/* Rows                                                                                            */

typedef struct {
    PyObject_HEAD
    ans_rows *rows;
} RowsObject;

static void Rows_dealloc(PyObject *op) {
    RowsObject *self = (RowsObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    ans_rows_free(self->rows);
    self->rows = NULL;
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* Byte size of `count` items of `itemsize` bytes, or -1 (with an exception) on overflow. */
static Py_ssize_t byte_size(uint64_t count, size_t itemsize) {
    if (itemsize != 0 && count > (uint64_t)PY_SSIZE_T_MAX / itemsize) {
        PyErr_SetString(PyExc_OverflowError, "annstream: result too large for this platform");
        return -1;
    }
    return (Py_ssize_t)(count * itemsize);
}

static PyObject *Rows_get_format(PyObject *op, void *closure) {
    (void)closure;
    return PyUnicode_FromString(format_name(ans_rows_format(((RowsObject *)op)->rows)));
}

static PyObject *Rows_get_shape(PyObject *op, void *closure) {
    (void)closure;
    const ans_rows *r = ((RowsObject *)op)->rows;
    return shape_tuple(ans_rows_shape(r), ans_rows_ndim(r));
}

static PyObject *Rows_get_dtype(PyObject *op, void *closure) {
    (void)closure;
    return PyUnicode_FromString(ans_dtype_name(ans_rows_dtype(((RowsObject *)op)->rows)));
}

static PyObject *Rows_get_index_dtype(PyObject *op, void *closure) {
    (void)closure;
    const ans_rows *r = ((RowsObject *)op)->rows;
    if (ans_rows_format(r) != ANS_FORMAT_CSR) {
        Py_RETURN_NONE;
    }
    return PyUnicode_FromString(ans_dtype_name(ans_rows_index_dtype(r)));
}

static PyObject *Rows_get_nnz(PyObject *op, void *closure) {
    (void)closure;
    const ans_rows *r = ((RowsObject *)op)->rows;
    if (ans_rows_format(r) != ANS_FORMAT_CSR) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)ans_rows_nnz(r));
}

static PyObject *Rows_get_data(PyObject *op, void *closure) {
    (void)closure;
    const ans_rows *r = ((RowsObject *)op)->rows;
    module_state *st = state_of_type(Py_TYPE(op));
    if (st == NULL) {
        return NULL;
    }
    size_t itemsize = ans_dtype_size(ans_rows_dtype(r));
    uint64_t count;
    if (ans_rows_format(r) == ANS_FORMAT_CSR) {
        count = ans_rows_nnz(r);
    } else {
        const uint64_t *shape = ans_rows_shape(r);
        int ndim = ans_rows_ndim(r);
        count = 1;
        for (int i = 0; i < ndim; i++) {
            if (shape[i] != 0 && count > UINT64_MAX / shape[i]) {
                PyErr_SetString(PyExc_OverflowError, "annstream: result too large");
                return NULL;
            }
            count *= shape[i];
        }
    }
    Py_ssize_t len = byte_size(count, itemsize);
    if (len < 0) {
        return NULL;
    }
    return buffer_new(st, op, ans_rows_data(r), len);
}

static PyObject *Rows_get_indices(PyObject *op, void *closure) {
    (void)closure;
    const ans_rows *r = ((RowsObject *)op)->rows;
    if (ans_rows_format(r) != ANS_FORMAT_CSR) {
        Py_RETURN_NONE;
    }
    module_state *st = state_of_type(Py_TYPE(op));
    if (st == NULL) {
        return NULL;
    }
    Py_ssize_t len = byte_size(ans_rows_nnz(r), ans_dtype_size(ans_rows_index_dtype(r)));
    if (len < 0) {
        return NULL;
    }
    return buffer_new(st, op, ans_rows_indices(r), len);
}

static PyObject *Rows_get_indptr(PyObject *op, void *closure) {
    (void)closure;
    const ans_rows *r = ((RowsObject *)op)->rows;
    if (ans_rows_format(r) != ANS_FORMAT_CSR) {
        Py_RETURN_NONE;
    }
    module_state *st = state_of_type(Py_TYPE(op));
    if (st == NULL) {
        return NULL;
    }
    const uint64_t *shape = ans_rows_shape(r);
    uint64_t nrows = ans_rows_ndim(r) > 0 ? shape[0] : 0;
    if (nrows == UINT64_MAX) {
        PyErr_SetString(PyExc_OverflowError, "annstream: result too large");
        return NULL;
    }
    Py_ssize_t len = byte_size(nrows + 1, ans_dtype_size(ans_rows_index_dtype(r)));
    if (len < 0) {
        return NULL;
    }
    return buffer_new(st, op, ans_rows_indptr(r), len);
}

static PyGetSetDef Rows_getset[] = {
    {"format", Rows_get_format, NULL, "'dense' or 'csr'.", NULL},
    {"shape", Rows_get_shape, NULL, "Shape of the result.", NULL},
    {"dtype", Rows_get_dtype, NULL, "numpy name of the value type.", NULL},
    {"index_dtype", Rows_get_index_dtype, NULL, "CSR: numpy name of the index type.", NULL},
    {"nnz", Rows_get_nnz, NULL, "CSR: number of stored values.", NULL},
    {"data", Rows_get_data, NULL, "Buffer over the values (dense array or CSR data).", NULL},
    {"indices", Rows_get_indices, NULL, "CSR: buffer over the column indices.", NULL},
    {"indptr", Rows_get_indptr, NULL, "CSR: buffer over the row pointers.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Rows_slots[] = {
    {Py_tp_doc, (void *)"Rows read from an element; owns the result buffers."},
    {Py_tp_dealloc, (void *)Rows_dealloc},
    {Py_tp_getset, (void *)Rows_getset},
    {0, NULL},
};

static PyType_Spec Rows_spec = {
    .name = "annstream._core.Rows",
    .basicsize = sizeof(RowsObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Rows_slots,
};

static PyObject *rows_new(module_state *st, ans_rows *rows) {
    RowsObject *r = (RowsObject *)PyType_GenericAlloc(st->RowsType, 0);
    if (r == NULL) {
        ans_rows_free(rows);
        return NULL;
    }
    r->rows = rows;
    return (PyObject *)r;
}

/* ---------------------------------------------------------------------------------------------- */
/* Store                                                                                           */

static long current_pid(void) {
#if defined(_WIN32)
    return (long)GetCurrentProcessId();
#else
    return (long)getpid();
#endif
}

typedef struct {
    PyObject_HEAD
    ans_store *store;
    PyObject *path;    /* str */
    Py_ssize_t busy;   /* calls in flight (GIL held when changed) */
    int closing;
    long pid;          /* process that opened it */
} StoreObject;

/* A forked child must not use, close or free a store (or element) of its parent: a parent thread
 * may have held one of its locks, or been inside a call, at the fork. annstream.Store reopens the
 * path in the child instead; the inherited C objects are left alone (their memory stays mapped
 * until the child exits). */
static int foreign_error(const char *what, long pid) {
    PyErr_Format(PyExc_RuntimeError,
                 "this %s was opened in process %ld; a forked child cannot use it (annstream.Store "
                 "reopens its path in a new process)",
                 what, pid);
    return -1;
}

static int store_enter(StoreObject *self) {
    if (self->store == NULL || self->closing) {
        closed_error("store");
        return -1;
    }
    if (self->pid != current_pid()) {
        return foreign_error("store", self->pid);
    }
    self->busy++;
    return 0;
}

static void store_leave(StoreObject *self) {
    self->busy--;
}

static void Store_dealloc(PyObject *op) {
    StoreObject *self = (StoreObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    /* No call can be in flight: each one holds a reference to the store. */
    if (self->pid == current_pid()) {
        ans_store_free(self->store);
    }
    self->store = NULL;
    Py_CLEAR(self->path);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *Store_close(PyObject *op, PyObject *unused) {
    (void)unused;
    StoreObject *self = (StoreObject *)op;
    if (self->store == NULL || self->closing) {
        /* already closed, or being closed by another thread */
        Py_RETURN_NONE;
    }
    if (self->pid != current_pid()) {
        self->store = NULL; /* a parent's store: left alone (see foreign_error) */
        Py_RETURN_NONE;
    }
    self->closing = 1;
    while (self->busy > 0) {
        Py_BEGIN_ALLOW_THREADS
        sleep_briefly();
        Py_END_ALLOW_THREADS
    }
    ans_store *store = self->store;
    self->store = NULL;
    Py_BEGIN_ALLOW_THREADS
    ans_store_free(store);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Store_get_closed(PyObject *op, void *closure) {
    (void)closure;
    StoreObject *self = (StoreObject *)op;
    return PyBool_FromLong(self->store == NULL || self->closing);
}

static PyObject *Store_get_path(PyObject *op, void *closure) {
    (void)closure;
    return Py_NewRef(((StoreObject *)op)->path);
}

#define STORE_CHECK_OPEN(self)                                                                     \
    do {                                                                                           \
        if ((self)->store == NULL || (self)->closing) {                                            \
            return closed_error("store");                                                          \
        }                                                                                          \
    } while (0)

static PyObject *Store_get_container(PyObject *op, void *closure) {
    (void)closure;
    StoreObject *self = (StoreObject *)op;
    STORE_CHECK_OPEN(self);
    return PyUnicode_FromString(ans_store_container(self->store));
}

static PyObject *Store_get_n_obs(PyObject *op, void *closure) {
    (void)closure;
    StoreObject *self = (StoreObject *)op;
    STORE_CHECK_OPEN(self);
    return PyLong_FromUnsignedLongLong((unsigned long long)ans_store_n_obs(self->store));
}

static PyObject *Store_get_n_vars(PyObject *op, void *closure) {
    (void)closure;
    StoreObject *self = (StoreObject *)op;
    STORE_CHECK_OPEN(self);
    return PyLong_FromUnsignedLongLong((unsigned long long)ans_store_n_vars(self->store));
}

static PyObject *Store_get_threads(PyObject *op, void *closure) {
    (void)closure;
    StoreObject *self = (StoreObject *)op;
    STORE_CHECK_OPEN(self);
    return PyLong_FromLong(ans_store_threads(self->store));
}

static PyObject *Store_keys(PyObject *op, PyObject *unused) {
    (void)unused;
    StoreObject *self = (StoreObject *)op;
    STORE_CHECK_OPEN(self);
    size_t n = ans_store_n_keys(self->store);
    if (n > (size_t)PY_SSIZE_T_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many keys");
        return NULL;
    }
    PyObject *t = PyTuple_New((Py_ssize_t)n);
    if (t == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        const char *key = ans_store_key(self->store, i);
        PyObject *s = PyUnicode_FromString(key != NULL ? key : "");
        if (s == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, (Py_ssize_t)i, s);
    }
    return t;
}

static PyObject *Store_describe(PyObject *op, PyObject *args, PyObject *kwargs) {
    StoreObject *self = (StoreObject *)op;
    static char *kwlist[] = {"json", NULL};
    int json = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p:describe", kwlist, &json)) {
        return NULL;
    }
    module_state *st = state_of_type(Py_TYPE(op));
    if (st == NULL || store_enter(self) < 0) {
        return NULL;
    }
    char *text = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ans_store_describe(self->store, json, &text);
    Py_END_ALLOW_THREADS
    store_leave(self);
    PyObject *result = NULL;
    if (rc != ANS_OK) {
        raise_status(st, rc, 0, NULL);
    } else {
        result = PyUnicode_DecodeUTF8(text != NULL ? text : "", text != NULL ? (Py_ssize_t)strlen(text) : 0,
                                      "replace");
    }
    ans_free(text);
    return result;
}

/* ---- frames ---- */

static const char *column_kind_name(ans_column_kind kind) {
    switch (kind) {
    case ANS_COLUMN_NUMERIC:
        return "numeric";
    case ANS_COLUMN_STRING:
        return "string";
    case ANS_COLUMN_CATEGORICAL:
        return "categorical";
    case ANS_COLUMN_NULLABLE_INT:
        return "nullable-integer";
    case ANS_COLUMN_NULLABLE_BOOL:
        return "nullable-boolean";
    case ANS_COLUMN_NULLABLE_STRING:
        return "nullable-string";
    }
    return "unknown";
}

/* A list of `n` str decoded from UTF-8 items data[offsets[i]:offsets[i+1]]. */
static PyObject *strings_to_list(module_state *st, const uint64_t *offsets, const char *data,
                                 uint64_t n, const char *what) {
    if (n > (uint64_t)PY_SSIZE_T_MAX) {
        PyErr_SetString(PyExc_OverflowError, "annstream: too many strings");
        return NULL;
    }
    if (n > 0 && offsets == NULL) {
        PyErr_Format(st->FormatError, "annstream: column %s has no string offsets", what);
        return NULL;
    }
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL) {
        return NULL;
    }
    PyObject *prev = NULL;
    uint64_t prev_start = 0, prev_len = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t start = offsets[i], stop = offsets[i + 1];
        if (stop < start || stop - start > (uint64_t)PY_SSIZE_T_MAX || (stop > start && data == NULL)) {
            PyErr_Format(st->FormatError, "annstream: column %s has bad string offsets at item %llu",
                         what, (unsigned long long)i);
            Py_DECREF(list);
            return NULL;
        }
        uint64_t len = stop - start;
        PyObject *s;
        if (prev != NULL && len == prev_len &&
            (len == 0 || memcmp(data + start, data + prev_start, (size_t)len) == 0)) {
            s = Py_NewRef(prev); /* runs of equal strings share one object */
        } else {
            s = PyUnicode_DecodeUTF8(len > 0 ? data + start : "", (Py_ssize_t)len, "strict");
            if (s == NULL) {
                Py_DECREF(list);
                return NULL;
            }
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
        prev = s;
        prev_start = start;
        prev_len = len;
    }
    return list;
}

static PyObject *copy_bytes(module_state *st, const void *ptr, uint64_t count, size_t itemsize,
                            const char *what) {
    Py_ssize_t len = byte_size(count, itemsize);
    if (len < 0) {
        return NULL;
    }
    if (len > 0 && ptr == NULL) {
        PyErr_Format(st->FormatError, "annstream: column %s has no values", what);
        return NULL;
    }
    if (len == 0) {
        return PyByteArray_FromStringAndSize("", 0);
    }
    return PyByteArray_FromStringAndSize((const char *)ptr, len);
}

static int dict_set_steal(PyObject *dict, const char *key, PyObject *value) {
    if (value == NULL) {
        return -1;
    }
    int rc = PyDict_SetItemString(dict, key, value);
    Py_DECREF(value);
    return rc;
}

/* One column as a dict: name, kind, dtype, length, values (bytearray), strings (list of str), mask
 * (bytearray of 0/1), na_value, ordered, cat_dtype, categories (bytearray or list of str). */
static PyObject *column_to_dict(module_state *st, const ans_column *c) {
    const char *name = c->name != NULL ? c->name : "";
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    if (dict_set_steal(d, "name", PyUnicode_FromString(name)) < 0 ||
        dict_set_steal(d, "kind", PyUnicode_FromString(column_kind_name(c->kind))) < 0 ||
        dict_set_steal(d, "dtype", PyUnicode_FromString(ans_dtype_name(c->dtype))) < 0 ||
        dict_set_steal(d, "length", PyLong_FromUnsignedLongLong((unsigned long long)c->length)) < 0) {
        goto error;
    }
    switch (c->kind) {
    case ANS_COLUMN_STRING:
    case ANS_COLUMN_NULLABLE_STRING:
        if (dict_set_steal(d, "strings", strings_to_list(st, c->str_offsets, c->str_data, c->length, name)) < 0) {
            goto error;
        }
        break;
    case ANS_COLUMN_NUMERIC:
    case ANS_COLUMN_CATEGORICAL:
    case ANS_COLUMN_NULLABLE_INT:
    case ANS_COLUMN_NULLABLE_BOOL: {
        size_t itemsize = ans_dtype_size(c->dtype);
        if (itemsize == 0) {
            PyErr_Format(st->FormatError, "annstream: column %s has values of type %s", name,
                         ans_dtype_name(c->dtype));
            goto error;
        }
        if (dict_set_steal(d, "values", copy_bytes(st, c->values, c->length, itemsize, name)) < 0) {
            goto error;
        }
        break;
    }
    default:
        PyErr_Format(st->FormatError, "annstream: column %s has an unknown kind (%d)", name, (int)c->kind);
        goto error;
    }
    if (c->kind == ANS_COLUMN_NULLABLE_INT || c->kind == ANS_COLUMN_NULLABLE_BOOL ||
        c->kind == ANS_COLUMN_NULLABLE_STRING) {
        if (c->mask == NULL && c->length > 0) {
            PyErr_Format(st->FormatError, "annstream: nullable column %s has no mask", name);
            goto error;
        }
        if (dict_set_steal(d, "mask", copy_bytes(st, c->mask, c->length, 1, name)) < 0) {
            goto error;
        }
    }
    if (c->kind == ANS_COLUMN_NULLABLE_STRING && c->na_value != NULL) {
        if (dict_set_steal(d, "na_value", PyUnicode_FromString(c->na_value)) < 0) {
            goto error;
        }
    }
    if (c->kind == ANS_COLUMN_CATEGORICAL) {
        PyObject *cats;
        if (c->cat_dtype == ANS_DTYPE_STRING) {
            cats = strings_to_list(st, c->cat_offsets, c->cat_data, c->n_categories, name);
        } else {
            size_t itemsize = ans_dtype_size(c->cat_dtype);
            if (itemsize == 0) {
                PyErr_Format(st->FormatError, "annstream: categorical %s has categories of type %s",
                             name, ans_dtype_name(c->cat_dtype));
                goto error;
            }
            cats = copy_bytes(st, c->cat_values, c->n_categories, itemsize, name);
        }
        if (dict_set_steal(d, "categories", cats) < 0 ||
            dict_set_steal(d, "cat_dtype", PyUnicode_FromString(ans_dtype_name(c->cat_dtype))) < 0 ||
            dict_set_steal(d, "ordered", PyBool_FromLong(c->ordered != 0)) < 0) {
            goto error;
        }
    }
    return d;
error:
    Py_DECREF(d);
    return NULL;
}

static PyObject *frame_to_python(module_state *st, const ans_frame *frame) {
    ans_column col;
    PyObject *index = NULL, *columns = NULL, *result = NULL;
    int rc = ans_frame_index(frame, &col);
    if (rc != ANS_OK) {
        return raise_status(st, rc, 0, NULL);
    }
    index = column_to_dict(st, &col);
    if (index == NULL) {
        goto finally;
    }
    size_t n = ans_frame_n_columns(frame);
    if (n > (size_t)PY_SSIZE_T_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many columns");
        goto finally;
    }
    columns = PyList_New((Py_ssize_t)n);
    if (columns == NULL) {
        goto finally;
    }
    for (size_t i = 0; i < n; i++) {
        rc = ans_frame_column(frame, i, &col);
        if (rc != ANS_OK) {
            raise_status(st, rc, 0, NULL);
            goto finally;
        }
        PyObject *d = column_to_dict(st, &col);
        if (d == NULL) {
            goto finally;
        }
        PyList_SET_ITEM(columns, (Py_ssize_t)i, d);
    }
    result = Py_BuildValue("(KOO)", (unsigned long long)ans_frame_n_rows(frame), index, columns);
finally:
    Py_XDECREF(index);
    Py_XDECREF(columns);
    return result;
}

/* Copy the UTF-8 of a sequence of str into one malloc'd block (so that nothing borrowed from Python
 * objects is used while the GIL is released). */
static int copy_names(PyObject *seq_obj, char ***names_out, size_t *n_out) {
    PyObject *seq = PySequence_Fast(seq_obj, "columns must be a sequence of str");
    if (seq == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyUnicode_Check(item)) {
            PyErr_Format(PyExc_TypeError, "column names must be str, not %.100s", Py_TYPE(item)->tp_name);
            Py_DECREF(seq);
            return -1;
        }
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(item, &len);
        if (s == NULL) {
            Py_DECREF(seq);
            return -1;
        }
        if ((Py_ssize_t)strlen(s) != len) {
            PyErr_SetString(PyExc_ValueError, "column name contains a NUL character");
            Py_DECREF(seq);
            return -1;
        }
        total += (size_t)len + 1;
    }
    size_t ptrs = (size_t)(n > 0 ? n : 1) * sizeof(char *);
    char **names = (char **)PyMem_RawMalloc(ptrs + total + 1);
    if (names == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    char *p = (char *)names + ptrs;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(seq, i), &len);
        memcpy(p, s, (size_t)len + 1);
        names[i] = p;
        p += len + 1;
    }
    Py_DECREF(seq);
    *names_out = names;
    *n_out = (size_t)n;
    return 0;
}

static PyObject *Store_read_frame(PyObject *op, PyObject *args, PyObject *kwargs) {
    StoreObject *self = (StoreObject *)op;
    static char *kwlist[] = {"which", "columns", NULL};
    const char *which_arg = NULL;
    PyObject *columns_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|O:read_frame", kwlist, &which_arg, &columns_obj)) {
        return NULL;
    }
    module_state *st = state_of_type(Py_TYPE(op));
    if (st == NULL) {
        return NULL;
    }
    /* `which` is borrowed from the args tuple, which outlives this call. */
    const char *which = which_arg;
    char **names = NULL;
    size_t n_names = 0;
    if (columns_obj != Py_None && copy_names(columns_obj, &names, &n_names) < 0) {
        return NULL;
    }
    if (store_enter(self) < 0) {
        PyMem_RawFree(names);
        return NULL;
    }
    ans_frame *frame = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ans_store_read_frame(self->store, which, (const char *const *)names, n_names, &frame);
    Py_END_ALLOW_THREADS
    store_leave(self);
    PyMem_RawFree(names);
    PyObject *result = NULL;
    if (rc != ANS_OK) {
        raise_status(st, rc, 0, NULL);
    } else {
        /* the frame does not depend on the store: convert it outside the busy window */
        result = frame_to_python(st, frame);
    }
    ans_frame_free(frame);
    return result;
}

/* ---- elements ---- */

typedef struct {
    PyObject_HEAD
    ans_element *element;
    StoreObject *store; /* strong reference */
    PyObject *key;      /* str */
    Py_ssize_t busy;
    int closing;
} ElementObject;

static PyObject *Store_element(PyObject *op, PyObject *args) {
    StoreObject *self = (StoreObject *)op;
    PyObject *key_obj;
    if (!PyArg_ParseTuple(args, "U:element", &key_obj)) {
        return NULL;
    }
    module_state *st = state_of_type(Py_TYPE(op));
    if (st == NULL) {
        return NULL;
    }
    Py_ssize_t key_len;
    const char *key = PyUnicode_AsUTF8AndSize(key_obj, &key_len);
    if (key == NULL) {
        return NULL;
    }
    if ((Py_ssize_t)strlen(key) != key_len) {
        PyErr_SetObject(PyExc_KeyError, key_obj);
        return NULL;
    }
    if (store_enter(self) < 0) {
        return NULL;
    }
    ans_element *element = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ans_store_element(&element, self->store, key);
    Py_END_ALLOW_THREADS
    store_leave(self);
    if (rc != ANS_OK) {
        return raise_status(st, rc, 0, NULL);
    }
    ElementObject *e = (ElementObject *)PyType_GenericAlloc(st->ElementType, 0);
    if (e == NULL) {
        ans_element_free(element);
        return NULL;
    }
    e->element = element;
    e->store = (StoreObject *)Py_NewRef(op);
    e->key = Py_NewRef(key_obj);
    return (PyObject *)e;
}

static PyMethodDef Store_methods[] = {
    {"close", Store_close, METH_NOARGS,
     "close()\n--\n\nClose the store; waits for reads in flight. Idempotent."},
    {"keys", Store_keys, METH_NOARGS, "keys()\n--\n\nThe row-aligned elements, as a tuple of paths."},
    {"element", Store_element, METH_VARARGS, "element(key)\n--\n\nOpen the row-aligned element `key`."},
    {"describe", (PyCFunction)(void (*)(void))Store_describe, METH_VARARGS | METH_KEYWORDS,
     "describe(json=False)\n--\n\nDescribe the store (text, or a JSON document)."},
    {"read_frame", (PyCFunction)(void (*)(void))Store_read_frame, METH_VARARGS | METH_KEYWORDS,
     "read_frame(which, columns=None)\n--\n\n"
     "Read 'obs', 'var' or 'raw/var' as (n_rows, index, [columns]) of column dicts."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Store_getset[] = {
    {"path", Store_get_path, NULL, "The path given to open().", NULL},
    {"container", Store_get_container, NULL, "'zarr-v2', 'zarr-v3' or 'h5ad'.", NULL},
    {"n_obs", Store_get_n_obs, NULL, "Number of observations (rows).", NULL},
    {"n_vars", Store_get_n_vars, NULL, "Number of variables.", NULL},
    {"threads", Store_get_threads, NULL, "Decoding threads of the store.", NULL},
    {"closed", Store_get_closed, NULL, "True once close() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Store_slots[] = {
    {Py_tp_doc, (void *)"An open AnnData store (use annstream.open)."},
    {Py_tp_dealloc, (void *)Store_dealloc},
    {Py_tp_methods, (void *)Store_methods},
    {Py_tp_getset, (void *)Store_getset},
    {0, NULL},
};

static PyType_Spec Store_spec = {
    .name = "annstream._core.Store",
    .basicsize = sizeof(StoreObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Store_slots,
};

/* ---------------------------------------------------------------------------------------------- */
/* Element                                                                                         */

static int element_enter(ElementObject *self) {
    if (self->element == NULL || self->closing) {
        closed_error("element");
        return -1;
    }
    if (store_enter(self->store) < 0) {
        return -1;
    }
    self->busy++;
    return 0;
}

static void element_leave(ElementObject *self) {
    self->busy--;
    store_leave(self->store);
}

static void Element_dealloc(PyObject *op) {
    ElementObject *self = (ElementObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    if (self->store == NULL || self->store->pid == current_pid()) {
        ans_element_free(self->element);
    }
    self->element = NULL;
    Py_CLEAR(self->store);
    Py_CLEAR(self->key);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *Element_close(PyObject *op, PyObject *unused) {
    (void)unused;
    ElementObject *self = (ElementObject *)op;
    if (self->element == NULL || self->closing) {
        Py_RETURN_NONE;
    }
    if (self->store != NULL && self->store->pid != current_pid()) {
        self->element = NULL; /* a parent's element: left alone (see foreign_error) */
        Py_RETURN_NONE;
    }
    self->closing = 1;
    while (self->busy > 0) {
        Py_BEGIN_ALLOW_THREADS
        sleep_briefly();
        Py_END_ALLOW_THREADS
    }
    ans_element *element = self->element;
    self->element = NULL;
    ans_element_free(element);
    Py_RETURN_NONE;
}

#define ELEMENT_CHECK_OPEN(self)                                                                   \
    do {                                                                                           \
        if ((self)->element == NULL || (self)->closing) {                                          \
            return closed_error("element");                                                        \
        }                                                                                          \
    } while (0)

static PyObject *Element_get_key(PyObject *op, void *closure) {
    (void)closure;
    return Py_NewRef(((ElementObject *)op)->key);
}

static PyObject *Element_get_store(PyObject *op, void *closure) {
    (void)closure;
    return Py_NewRef((PyObject *)((ElementObject *)op)->store);
}

static PyObject *Element_get_closed(PyObject *op, void *closure) {
    (void)closure;
    ElementObject *self = (ElementObject *)op;
    return PyBool_FromLong(self->element == NULL || self->closing);
}

static PyObject *Element_get_format(PyObject *op, void *closure) {
    (void)closure;
    ElementObject *self = (ElementObject *)op;
    ELEMENT_CHECK_OPEN(self);
    return PyUnicode_FromString(format_name(ans_element_format(self->element)));
}

static PyObject *Element_get_shape(PyObject *op, void *closure) {
    (void)closure;
    ElementObject *self = (ElementObject *)op;
    ELEMENT_CHECK_OPEN(self);
    return shape_tuple(ans_element_shape(self->element), ans_element_ndim(self->element));
}

static PyObject *Element_get_dtype(PyObject *op, void *closure) {
    (void)closure;
    ElementObject *self = (ElementObject *)op;
    ELEMENT_CHECK_OPEN(self);
    return PyUnicode_FromString(ans_dtype_name(ans_element_dtype(self->element)));
}

static int host_is_little_endian(void) {
    const uint16_t one = 1;
    uint8_t first;
    memcpy(&first, &one, 1);
    return first == 1;
}

/* Accept a C-contiguous 1-D buffer of native int64. */
static int check_int64_buffer(const Py_buffer *view) {
    const char *fmt = view->format != NULL ? view->format : "B";
    if (fmt[0] == '@' || fmt[0] == '=' || (fmt[0] == '<' && host_is_little_endian()) ||
        (fmt[0] == '>' && !host_is_little_endian())) {
        fmt++;
    }
    int ok = view->itemsize == 8 && (strcmp(fmt, "q") == 0 || strcmp(fmt, "l") == 0) &&
             (view->ndim == 1 || (view->ndim == 0 && view->len == 0));
    if (!ok) {
        PyErr_SetString(PyExc_TypeError, "rows must be a 1-D contiguous buffer of int64");
        return -1;
    }
    return 0;
}

static PyObject *Element_read_rows(PyObject *op, PyObject *rows_obj) {
    ElementObject *self = (ElementObject *)op;
    module_state *st = state_of_type(Py_TYPE(op));
    if (st == NULL) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(rows_obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "rows must be a 1-D contiguous buffer of int64");
        return NULL;
    }
    if (check_int64_buffer(&view) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (element_enter(self) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    size_t nrows = (size_t)(view.len / 8);
    ans_rows *rows = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ans_element_read_rows(self->element, (const int64_t *)view.buf, nrows, &rows);
    Py_END_ALLOW_THREADS
    /* Leave the busy window before running anything that may run Python code (a finalizer could
     * close this very object and would then wait for itself). The error message stays valid: the
     * library is not called in between. */
    element_leave(self);
    PyObject *result = rc == ANS_OK ? rows_new(st, rows) : raise_status(st, rc, 0, NULL);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *Element_read_range(PyObject *op, PyObject *args) {
    ElementObject *self = (ElementObject *)op;
    unsigned long long start, stop;
    if (!PyArg_ParseTuple(args, "KK:read_range", &start, &stop)) {
        return NULL;
    }
    module_state *st = state_of_type(Py_TYPE(op));
    if (st == NULL || element_enter(self) < 0) {
        return NULL;
    }
    ans_rows *rows = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ans_element_read_range(self->element, (uint64_t)start, (uint64_t)stop, &rows);
    Py_END_ALLOW_THREADS
    element_leave(self);
    return rc == ANS_OK ? rows_new(st, rows) : raise_status(st, rc, 0, NULL);
}

static PyMethodDef Element_methods[] = {
    {"close", Element_close, METH_NOARGS,
     "close()\n--\n\nRelease the element; waits for reads in flight. Idempotent."},
    {"read_rows", Element_read_rows, METH_O,
     "read_rows(rows)\n--\n\nRead the rows given as a 1-D C-contiguous int64 buffer; returns Rows."},
    {"read_range", Element_read_range, METH_VARARGS,
     "read_range(start, stop)\n--\n\nRead the contiguous rows [start, stop); returns Rows."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Element_getset[] = {
    {"key", Element_get_key, NULL, "Path of the element in the store.", NULL},
    {"store", Element_get_store, NULL, "The Store the element was opened from.", NULL},
    {"format", Element_get_format, NULL, "'dense', 'csr' or 'csc' (on disk).", NULL},
    {"shape", Element_get_shape, NULL, "Shape of the element.", NULL},
    {"dtype", Element_get_dtype, NULL, "numpy name of the value type.", NULL},
    {"closed", Element_get_closed, NULL, "True once close() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Element_slots[] = {
    {Py_tp_doc, (void *)"A row-aligned element of a store (use Store.element)."},
    {Py_tp_dealloc, (void *)Element_dealloc},
    {Py_tp_methods, (void *)Element_methods},
    {Py_tp_getset, (void *)Element_getset},
    {0, NULL},
};

static PyType_Spec Element_spec = {
    .name = "annstream._core.Element",
    .basicsize = sizeof(ElementObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Element_slots,
};

/* ---------------------------------------------------------------------------------------------- */
/* Batch                                                                                           */

/* One ans_batch handed out by a Loader. Its buffers are exported (zero-copy) through Buffer objects
 * that hold a strong reference to the Batch, so ans_batch_release - after which the loader reuses
 * the memory - runs only when the last numpy array / tensor viewing any of them is gone. */
typedef struct {
    PyObject_HEAD
    ans_batch *batch;
    long pid; /* process that got the batch: a forked child never releases it (the loader's mutex
                 may have been copied locked) */
} BatchObject;

static void Batch_dealloc(PyObject *op) {
    BatchObject *self = (BatchObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    if (self->batch != NULL && self->pid == current_pid()) {
        ans_batch_release(self->batch);
    }
    self->batch = NULL;
    tp->tp_free(op);
    Py_DECREF(tp);
}

static Py_ssize_t batch_data_bytes(const ans_batch *b) {
    size_t itemsize = ans_dtype_size(ans_batch_dtype(b));
    uint64_t count;
    if (ans_batch_format(b) == ANS_FORMAT_CSR) {
        count = ans_batch_nnz(b);
    } else {
        const uint64_t *shape = ans_batch_shape(b);
        int ndim = ans_batch_ndim(b);
        count = 1;
        for (int i = 0; i < ndim; i++) {
            if (shape[i] != 0 && count > UINT64_MAX / shape[i]) {
                PyErr_SetString(PyExc_OverflowError, "annstream: batch too large");
                return -1;
            }
            count *= shape[i];
        }
    }
    return byte_size(count, itemsize);
}

/* parts() -> (format, shape, dtype, index_dtype, data, indices, indptr, rows): everything needed to
 * build the Python objects in one call. CSR-only entries are None for dense batches; rows is None
 * without return_index. */
static PyObject *Batch_parts(PyObject *op, PyObject *unused) {
    (void)unused;
    BatchObject *self = (BatchObject *)op;
    const ans_batch *b = self->batch;
    module_state *st = state_of_type(Py_TYPE(op));
    if (st == NULL) {
        return NULL;
    }
    PyObject *shape = NULL, *data = NULL, *indices = NULL, *indptr = NULL, *rows = NULL;
    PyObject *result = NULL;
    int csr = ans_batch_format(b) == ANS_FORMAT_CSR;
    uint64_t nrows = ans_batch_n_rows(b);
    shape = shape_tuple(ans_batch_shape(b), ans_batch_ndim(b));
    if (shape == NULL) {
        goto done;
    }
    Py_ssize_t len = batch_data_bytes(b);
    if (len < 0 || (data = buffer_new(st, op, ans_batch_data(b), len)) == NULL) {
        goto done;
    }
    if (csr) {
        size_t isz = ans_dtype_size(ans_batch_index_dtype(b));
        Py_ssize_t ilen = byte_size(ans_batch_nnz(b), isz);
        if (ilen < 0 || (indices = buffer_new(st, op, ans_batch_indices(b), ilen)) == NULL) {
            goto done;
        }
        Py_ssize_t plen = byte_size(nrows + 1, isz);
        if (plen < 0 || (indptr = buffer_new(st, op, ans_batch_indptr(b), plen)) == NULL) {
            goto done;
        }
    } else {
        indices = Py_NewRef(Py_None);
        indptr = Py_NewRef(Py_None);
    }
    const uint64_t *r = ans_batch_rows(b);
    if (r != NULL) {
        Py_ssize_t rlen = byte_size(nrows, sizeof(uint64_t));
        if (rlen < 0 || (rows = buffer_new(st, op, (void *)r, rlen)) == NULL) {
            goto done;
        }
    } else {
        rows = Py_NewRef(Py_None);
    }
    if (csr) {
        result = Py_BuildValue("(sOssOOOO)", "csr", shape, ans_dtype_name(ans_batch_dtype(b)),
                               ans_dtype_name(ans_batch_index_dtype(b)), data, indices, indptr,
                               rows);
    } else {
        result = Py_BuildValue("(sOsOOOOO)", "dense", shape, ans_dtype_name(ans_batch_dtype(b)),
                               Py_None, data, indices, indptr, rows);
    }
done:
    Py_XDECREF(shape);
    Py_XDECREF(data);
    Py_XDECREF(indices);
    Py_XDECREF(indptr);
    Py_XDECREF(rows);
    return result;
}

static PyObject *Batch_get_epoch(PyObject *op, void *closure) {
    (void)closure;
    const ans_batch *b = ((BatchObject *)op)->batch;
    return PyLong_FromUnsignedLongLong((unsigned long long)ans_batch_epoch(b));
}

static PyObject *Batch_get_index(PyObject *op, void *closure) {
    (void)closure;
    const ans_batch *b = ((BatchObject *)op)->batch;
    return PyLong_FromUnsignedLongLong((unsigned long long)ans_batch_index(b));
}

static PyObject *Batch_get_n_rows(PyObject *op, void *closure) {
    (void)closure;
    const ans_batch *b = ((BatchObject *)op)->batch;
    return PyLong_FromUnsignedLongLong((unsigned long long)ans_batch_n_rows(b));
}

static PyObject *Batch_get_data_address(PyObject *op, void *closure) {
    (void)closure;
    return PyLong_FromVoidPtr(ans_batch_data(((BatchObject *)op)->batch));
}

static PyMethodDef Batch_methods[] = {
    {"parts", Batch_parts, METH_NOARGS,
     "parts()\n--\n\n(format, shape, dtype, index_dtype, data, indices, indptr, rows): the batch's "
     "buffers (zero-copy); index_dtype, indices, indptr are None for dense batches, rows without "
     "return_index."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Batch_getset[] = {
    {"epoch", Batch_get_epoch, NULL, "The epoch the batch belongs to.", NULL},
    {"index", Batch_get_index, NULL, "Index of the batch in its epoch (partition-local).", NULL},
    {"n_rows", Batch_get_n_rows, NULL, "Rows in the batch.", NULL},
    {"data_address", Batch_get_data_address, NULL, "Address of the values (for tests).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Batch_slots[] = {
    {Py_tp_doc, (void *)"A batch from a Loader; owns its buffers until the last view is gone."},
    {Py_tp_dealloc, (void *)Batch_dealloc},
    {Py_tp_methods, (void *)Batch_methods},
    {Py_tp_getset, (void *)Batch_getset},
    {0, NULL},
};

static PyType_Spec Batch_spec = {
    .name = "annstream._core.Batch",
    .basicsize = sizeof(BatchObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Batch_slots,
};

/* ---------------------------------------------------------------------------------------------- */
/* Loader                                                                                          */

/* An ans_loader. One thread drives it: calls are counted in `busy` (GIL held when changed); a
 * second concurrent next() raises RuntimeError; close() waits (GIL released) for the call in flight,
 * then frees the loader (which stops its producer thread). Batches handed out stay valid.
 *
 * Streams: set_epoch() and seek() restart the stream. They wait for a call in flight on another
 * thread (its batch belongs to the old stream) and return a new `generation`; next(), push_plan()
 * and end_plans() given the generation of the stream they belong to raise RuntimeError once another
 * restart happened, so an abandoned or concurrent iteration can never take a batch of (or push a
 * plan into) the stream a newer iteration owns. */
typedef struct {
    PyObject_HEAD
    ans_loader *loader;
    long pid; /* creator process: in a forked child the loader cannot be used */
    Py_ssize_t busy;
    int closing;
    unsigned long long generation; /* restarts so far (GIL held when changed) */
} LoaderObject;

static int loader_enter(LoaderObject *self) {
    if (self->loader == NULL || self->closing) {
        closed_error("loader");
        return -1;
    }
    if (self->busy > 0) {
        PyErr_SetString(PyExc_RuntimeError, "annstream: the loader is in use by another thread "
                                            "(one thread drives a loader)");
        return -1;
    }
    self->busy++;
    return 0;
}

static void loader_leave(LoaderObject *self) {
    self->busy--;
}

/* loader_enter for set_epoch / seek: waits (GIL released) for a call in flight on another thread,
 * then starts a new generation. */
static int loader_enter_restart(LoaderObject *self) {
    while (self->loader != NULL && !self->closing && self->busy > 0) {
        Py_BEGIN_ALLOW_THREADS
        sleep_briefly();
        Py_END_ALLOW_THREADS
    }
    if (loader_enter(self) < 0) {
        return -1;
    }
    self->generation++;
    return 0;
}

/* 0 when `gen` is NULL or None (no check) or the current generation; else RuntimeError. */
static int loader_check_generation(LoaderObject *self, PyObject *gen) {
    if (gen == NULL || gen == Py_None) {
        return 0;
    }
    unsigned long long g = PyLong_AsUnsignedLongLong(gen);
    if (g == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (g != self->generation) {
        PyErr_SetString(PyExc_RuntimeError,
                        "annstream Loader: another iteration started (or the loader was reset) "
                        "while this one was running");
        return -1;
    }
    return 0;
}

static void free_loader_nogil(ans_loader *loader) {
    if (loader == NULL) {
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    ans_loader_free(loader);
    Py_END_ALLOW_THREADS
}

static void Loader_dealloc(PyObject *op) {
    LoaderObject *self = (LoaderObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    ans_loader *loader = self->loader;
    self->loader = NULL;
    free_loader_nogil(loader);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *Loader_close(PyObject *op, PyObject *unused) {
    (void)unused;
    LoaderObject *self = (LoaderObject *)op;
    if (self->loader == NULL || self->closing) {
        Py_RETURN_NONE;
    }
    self->closing = 1;
    while (self->busy > 0) {
        Py_BEGIN_ALLOW_THREADS
        sleep_briefly();
        Py_END_ALLOW_THREADS
    }
    ans_loader *loader = self->loader;
    self->loader = NULL;
    free_loader_nogil(loader);
    Py_RETURN_NONE;
}

static PyObject *Loader_next(PyObject *op, PyObject *args) {
    LoaderObject *self = (LoaderObject *)op;
    PyObject *gen = NULL;
    if (!PyArg_ParseTuple(args, "|O:next", &gen)) {
        return NULL;
    }
    module_state *st = state_of_type(Py_TYPE(op));
    if (st == NULL || loader_enter(self) < 0) {
        return NULL;
    }
    if (loader_check_generation(self, gen) < 0) {
        loader_leave(self);
        return NULL;
    }
    ans_batch *batch = NULL;
    int rc;
    /* Wait in slices, so that Ctrl-C (or any signal handler raising) interrupts a slow load; the
     * producer carries on and the batch is there for the next call. */
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = ans_loader_next_wait(self->loader, &batch, 100);
        Py_END_ALLOW_THREADS
        if (rc != ANS_ETIMEDOUT) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            loader_leave(self);
            return NULL;
        }
    }
    loader_leave(self);
    if (rc == ANS_ITEROVER) {
        Py_RETURN_NONE;
    }
    if (rc != ANS_OK) {
        return raise_status(st, rc, 0, NULL);
    }
    BatchObject *b = (BatchObject *)PyType_GenericAlloc(st->BatchType, 0);
    if (b == NULL) {
        ans_batch_release(batch);
        return NULL;
    }
    b->batch = batch;
    b->pid = current_pid();
    return (PyObject *)b;
}

static PyObject *Loader_set_epoch(PyObject *op, PyObject *args) {
    LoaderObject *self = (LoaderObject *)op;
    unsigned long long epoch;
    if (!PyArg_ParseTuple(args, "K:set_epoch", &epoch)) {
        return NULL;
    }
    module_state *st = state_of_type(Py_TYPE(op));
    if (st == NULL || loader_enter_restart(self) < 0) {
        return NULL;
    }
    unsigned long long gen = self->generation;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ans_loader_set_epoch(self->loader, (uint64_t)epoch);
    Py_END_ALLOW_THREADS
    loader_leave(self);
    if (rc != ANS_OK) {
        return raise_status(st, rc, 0, NULL);
    }
    return PyLong_FromUnsignedLongLong(gen);
}

static PyObject *Loader_seek(PyObject *op, PyObject *args) {
    LoaderObject *self = (LoaderObject *)op;
    unsigned long long batch;
    if (!PyArg_ParseTuple(args, "K:seek", &batch)) {
        return NULL;
    }
    module_state *st = state_of_type(Py_TYPE(op));
    if (st == NULL || loader_enter_restart(self) < 0) {
        return NULL;
    }
    unsigned long long gen = self->generation;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ans_loader_seek(self->loader, (uint64_t)batch);
    Py_END_ALLOW_THREADS
    loader_leave(self);
    if (rc != ANS_OK) {
        return raise_status(st, rc, 0, NULL);
    }
    return PyLong_FromUnsignedLongLong(gen);
}

/* A C-contiguous 1-D buffer of native uint64 (or int64: the caller checked the values). */
static int get_u64_buffer(PyObject *obj, Py_buffer *view, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous buffer of uint64", what);
        return -1;
    }
    const char *fmt = view->format != NULL ? view->format : "B";
    if (fmt[0] == '@' || fmt[0] == '=' || (fmt[0] == '<' && host_is_little_endian()) ||
        (fmt[0] == '>' && !host_is_little_endian())) {
        fmt++;
    }
    int ok = view->itemsize == 8 && (strcmp(fmt, "Q") == 0 || strcmp(fmt, "L") == 0);
    if (!ok) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous buffer of uint64", what);
        return -1;
    }
    return 0;
}

/* push_plan(ranges, order, bounds[, generation]): uint64 buffers; ranges holds (start, count)
 * pairs. Safe while another thread is in next() (the C call is thread-safe against it): not
 * counted in `busy`. */
static PyObject *Loader_push_plan(PyObject *op, PyObject *args) {
    LoaderObject *self = (LoaderObject *)op;
    PyObject *ranges_obj, *order_obj, *bounds_obj, *gen = NULL;
    if (!PyArg_ParseTuple(args, "OOO|O:push_plan", &ranges_obj, &order_obj, &bounds_obj, &gen)) {
        return NULL;
    }
    module_state *st = state_of_type(Py_TYPE(op));
    if (st == NULL) {
        return NULL;
    }
    if (self->loader == NULL || self->closing) {
        return closed_error("loader");
    }
    if (loader_check_generation(self, gen) < 0) {
        return NULL;
    }
    Py_buffer ranges, order, bounds;
    if (get_u64_buffer(ranges_obj, &ranges, "ranges") < 0) {
        return NULL;
    }
    if (get_u64_buffer(order_obj, &order, "order") < 0) {
        PyBuffer_Release(&ranges);
        return NULL;
    }
    if (get_u64_buffer(bounds_obj, &bounds, "batch_bounds") < 0) {
        PyBuffer_Release(&ranges);
        PyBuffer_Release(&order);
        return NULL;
    }
    PyObject *result = NULL;
    size_t n_ranges2 = (size_t)(ranges.len / 8), n_order = (size_t)(order.len / 8);
    size_t n_bounds = (size_t)(bounds.len / 8);
    if (n_ranges2 % 2 != 0) {
        PyErr_SetString(PyExc_ValueError, "ranges must hold (start, count) pairs");
    } else if (n_bounds < 1) {
        PyErr_SetString(PyExc_ValueError, "batch_bounds must hold n_batches + 1 >= 1 entries");
    } else {
        self->busy++; /* close() waits for this push */
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = ans_loader_push_plan(self->loader, (const uint64_t *)ranges.buf, n_ranges2 / 2,
                                  (const uint64_t *)order.buf, n_order,
                                  (const uint64_t *)bounds.buf, n_bounds - 1);
        Py_END_ALLOW_THREADS
        self->busy--;
        result = rc == ANS_OK ? Py_NewRef(Py_None) : raise_status(st, rc, 0, NULL);
    }
    PyBuffer_Release(&ranges);
    PyBuffer_Release(&order);
    PyBuffer_Release(&bounds);
    return result;
}

static PyObject *Loader_end_plans(PyObject *op, PyObject *args) {
    LoaderObject *self = (LoaderObject *)op;
    PyObject *gen = NULL;
    if (!PyArg_ParseTuple(args, "|O:end_plans", &gen)) {
        return NULL;
    }
    module_state *st = state_of_type(Py_TYPE(op));
    if (st == NULL) {
        return NULL;
    }
    if (self->loader == NULL || self->closing) {
        return closed_error("loader");
    }
    if (loader_check_generation(self, gen) < 0) {
        return NULL;
    }
    int rc = ans_loader_end_plans(self->loader);
    if (rc != ANS_OK) {
        return raise_status(st, rc, 0, NULL);
    }
    Py_RETURN_NONE;
}

#define LOADER_CHECK_OPEN(self)                                                                    \
    do {                                                                                           \
        if ((self)->loader == NULL || (self)->closing) {                                           \
            return closed_error("loader");                                                         \
        }                                                                                          \
    } while (0)

static PyObject *Loader_get_n_batches(PyObject *op, void *closure) {
    (void)closure;
    LoaderObject *self = (LoaderObject *)op;
    LOADER_CHECK_OPEN(self);
    return PyLong_FromUnsignedLongLong((unsigned long long)ans_loader_n_batches(self->loader));
}

static PyObject *Loader_get_n_obs(PyObject *op, void *closure) {
    (void)closure;
    LoaderObject *self = (LoaderObject *)op;
    LOADER_CHECK_OPEN(self);
    return PyLong_FromUnsignedLongLong((unsigned long long)ans_loader_n_obs(self->loader));
}

static PyObject *Loader_get_epoch(PyObject *op, void *closure) {
    (void)closure;
    LoaderObject *self = (LoaderObject *)op;
    LOADER_CHECK_OPEN(self);
    return PyLong_FromUnsignedLongLong((unsigned long long)ans_loader_epoch(self->loader));
}

static PyObject *Loader_get_closed(PyObject *op, void *closure) {
    (void)closure;
    LoaderObject *self = (LoaderObject *)op;
    return PyBool_FromLong(self->loader == NULL || self->closing);
}

static PyObject *Loader_get_pid(PyObject *op, void *closure) {
    (void)closure;
    return PyLong_FromLong(((LoaderObject *)op)->pid);
}

static PyMethodDef Loader_methods[] = {
    {"next", Loader_next, METH_VARARGS,
     "next(generation=None)\n--\n\nThe next Batch of the epoch, or None at its end (waits, GIL "
     "released). RuntimeError if `generation` is given and the stream was restarted since."},
    {"set_epoch", Loader_set_epoch, METH_VARARGS,
     "set_epoch(epoch)\n--\n\nStart epoch `epoch` from its first batch; returns the new stream "
     "generation (waits for a call in flight on another thread)."},
    {"seek", Loader_seek, METH_VARARGS,
     "seek(batch)\n--\n\nContinue the current epoch at batch `batch`; returns the new stream "
     "generation."},
    {"push_plan", Loader_push_plan, METH_VARARGS,
     "push_plan(ranges, order, batch_bounds, generation=None)\n--\n\nCustom-plan mode: queue one "
     "load (uint64 buffers; ranges as (start, count) pairs)."},
    {"end_plans", Loader_end_plans, METH_VARARGS,
     "end_plans(generation=None)\n--\n\nCustom-plan mode: no more plans this epoch."},
    {"close", Loader_close, METH_NOARGS,
     "close()\n--\n\nStop the producer and free the loader; batches handed out stay valid."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Loader_getset[] = {
    {"n_batches", Loader_get_n_batches, NULL, "Batches of this partition per epoch.", NULL},
    {"n_obs", Loader_get_n_obs, NULL, "Total rows of the stores.", NULL},
    {"epoch", Loader_get_epoch, NULL, "The current epoch.", NULL},
    {"closed", Loader_get_closed, NULL, "True once close() was called.", NULL},
    {"pid", Loader_get_pid, NULL, "The process that created the loader.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Loader_slots[] = {
    {Py_tp_doc, (void *)"A C loader over stores (use annstream.Loader)."},
    {Py_tp_dealloc, (void *)Loader_dealloc},
    {Py_tp_methods, (void *)Loader_methods},
    {Py_tp_getset, (void *)Loader_getset},
    {0, NULL},
};

static PyType_Spec Loader_spec = {
    .name = "annstream._core.Loader",
    .basicsize = sizeof(LoaderObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Loader_slots,
};

static int dtype_from_name(const char *name, ans_dtype *out) {
    for (int d = ANS_DTYPE_BOOL; d <= ANS_DTYPE_STRING; d++) {
        if (strcmp(ans_dtype_name((ans_dtype)d), name) == 0) {
            *out = (ans_dtype)d;
            return 0;
        }
    }
    return -1;
}

/* loader(stores, key, ...): make an ans_loader (starts no thread). */
/* Pinning the loader's batch slots through the CUDA runtime (Loader(device="cuda")). The Python
 * side finds cudaSetDevice / cudaHostRegister / cudaHostUnregister in the libcudart that torch
 * loaded and passes their addresses; these trampolines call them from the loader's threads, first
 * making `device` current there (the runtime's per-thread device defaults to 0). */
typedef int (*cuda_set_device_fn)(int device);
typedef int (*cuda_host_register_fn)(void *ptr, size_t size, unsigned int flags);
typedef int (*cuda_host_unregister_fn)(void *ptr);

typedef struct cuda_pinning {
    cuda_set_device_fn set_device;
    cuda_host_register_fn host_register;
    cuda_host_unregister_fn host_unregister;
    int device;
} cuda_pinning;

#define CUDA_HOST_REGISTER_PORTABLE 1u /* cudaHostRegisterPortable: pinned for every context */

static int cuda_pin(void *user, void *ptr, size_t size) {
    cuda_pinning *c = user;
    int e = c->set_device(c->device);
    return e != 0 ? e : c->host_register(ptr, size, CUDA_HOST_REGISTER_PORTABLE);
}

static void cuda_unpin(void *user, void *ptr) {
    cuda_pinning *c = user;
    (void)c->set_device(c->device);
    (void)c->host_unregister(ptr);
}

static void cuda_pinning_release(void *user) {
    free(user);
}

/* pin: None, or (cudaSetDevice, cudaHostRegister, cudaHostUnregister addresses, device). */
static int parse_cuda_pinning(PyObject *pin, cuda_pinning **out) {
    *out = NULL;
    if (pin == NULL || pin == Py_None) {
        return 0;
    }
    unsigned long long set_device, reg, unreg;
    int device;
    if (!PyArg_ParseTuple(pin, "KKKi:pin", &set_device, &reg, &unreg, &device)) {
        return -1;
    }
    if (set_device == 0 || reg == 0 || unreg == 0 || device < 0) {
        PyErr_SetString(PyExc_ValueError, "pin: null function address or negative device");
        return -1;
    }
    cuda_pinning *c = malloc(sizeof *c);
    if (c == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    c->set_device = (cuda_set_device_fn)(uintptr_t)set_device;
    c->host_register = (cuda_host_register_fn)(uintptr_t)reg;
    c->host_unregister = (cuda_host_unregister_fn)(uintptr_t)unreg;
    c->device = device;
    *out = c;
    return 0;
}

static PyObject *core_loader(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"stores", "key", "batch_size", "chunk_size", "preload_nchunks",
                             "shuffle", "drop_last", "replacement", "num_samples", "seed", "epoch",
                             "partition", "n_partitions", "prefetch", "threads", "densify",
                             "out_dtype", "return_index", "custom_plans", "pin", NULL};
    PyObject *stores_obj;
    const char *key = "X";
    unsigned long long batch_size = 1, chunk_size = 512, preload_nchunks = 32, num_samples = 0;
    unsigned long long seed = 0, epoch = 0, partition = 0, n_partitions = 1;
    int shuffle = 0, drop_last = 0, replacement = 0, prefetch = 2, threads = 0, densify = 0;
    int return_index = 0, custom_plans = 0;
    const char *out_dtype = NULL;
    PyObject *pin_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|sKKKpppKKKKKiipzppO:loader", kwlist,
                                     &stores_obj, &key, &batch_size, &chunk_size, &preload_nchunks,
                                     &shuffle, &drop_last, &replacement, &num_samples, &seed,
                                     &epoch, &partition, &n_partitions, &prefetch, &threads,
                                     &densify, &out_dtype, &return_index, &custom_plans,
                                     &pin_obj)) {
        return NULL;
    }
    module_state *st = state_of_module(module);
    ans_loader_options opts = ANS_LOADER_OPTIONS_INIT;
    opts.key = key;
    opts.batch_size = batch_size;
    opts.chunk_size = chunk_size;
    opts.preload_nchunks = preload_nchunks;
    opts.shuffle = shuffle;
    opts.drop_last = drop_last;
    opts.replacement = replacement;
    opts.num_samples = num_samples;
    opts.seed = seed;
    opts.epoch = epoch;
    opts.partition = partition;
    opts.n_partitions = n_partitions;
    opts.prefetch = prefetch;
    opts.threads = threads;
    opts.densify = densify;
    opts.return_index = return_index;
    opts.custom_plans = custom_plans;
    if (out_dtype != NULL && dtype_from_name(out_dtype, &opts.out_dtype) < 0) {
        PyErr_Format(PyExc_ValueError, "unknown dtype %s", out_dtype);
        return NULL;
    }
    cuda_pinning *cpin = NULL; /* the loader owns it once ans_loader_new succeeds */
    if (parse_cuda_pinning(pin_obj, &cpin) < 0) {
        return NULL;
    }
    ans_host_pinning pinning = {cuda_pin, cuda_unpin, cuda_pinning_release, cpin};
    if (cpin != NULL) {
        opts.pinning = &pinning;
    }
    PyObject *seq = PySequence_Fast(stores_obj, "stores must be a sequence of Store objects");
    if (seq == NULL) {
        free(cpin);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "no stores");
        return NULL;
    }
    ans_store **stores = PyMem_Calloc((size_t)n, sizeof *stores);
    if (stores == NULL) {
        Py_DECREF(seq);
        free(cpin);
        return PyErr_NoMemory();
    }
    Py_ssize_t entered = 0;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyObject_TypeCheck(s, st->StoreType)) {
            PyErr_Format(PyExc_TypeError, "stores[%zd] is not an annstream._core.Store", i);
            goto done;
        }
        if (store_enter((StoreObject *)s) < 0) {
            goto done;
        }
        entered = i + 1;
        stores[i] = ((StoreObject *)s)->store;
    }
    ans_loader *loader = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ans_loader_new(&loader, stores, (size_t)n, &opts);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < entered; i++) {
        store_leave((StoreObject *)PySequence_Fast_GET_ITEM(seq, i));
    }
    entered = 0;
    if (rc != ANS_OK) {
        raise_status(st, rc, 0, NULL);
        goto done;
    }
    cpin = NULL; /* the loader's now */
    LoaderObject *lo = (LoaderObject *)PyType_GenericAlloc(st->LoaderType, 0);
    if (lo == NULL) {
        free_loader_nogil(loader);
        goto done;
    }
    lo->loader = loader;
    lo->pid = current_pid();
    result = (PyObject *)lo;
done:
    for (Py_ssize_t i = 0; i < entered; i++) {
        store_leave((StoreObject *)PySequence_Fast_GET_ITEM(seq, i));
    }
    free(cpin);
    PyMem_Free(stores);
    Py_DECREF(seq);
    return result;
}

/* ---------------------------------------------------------------------------------------------- */
/* module functions                                                                                */

static PyObject *core_open(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"path", "threads", NULL};
    PyObject *path_bytes = NULL;
    int threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&|i:open", kwlist, PyUnicode_FSConverter,
                                     &path_bytes, &threads)) {
        return NULL;
    }
    module_state *st = state_of_module(module);
    PyObject *result = NULL;
    PyObject *path_str = NULL;
    ans_store *store = NULL;
    if (threads < 0) {
        PyErr_SetString(PyExc_ValueError, "threads must be >= 0 (0 = one per CPU)");
        goto finally;
    }
    const char *path = PyBytes_AS_STRING(path_bytes);
    path_str = PyUnicode_DecodeFSDefault(path);
    if (path_str == NULL) {
        goto finally;
    }
    ans_store_options opts = ANS_STORE_OPTIONS_INIT;
    opts.threads = threads;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ans_store_open(&store, path, &opts);
    Py_END_ALLOW_THREADS
    if (rc != ANS_OK) {
        raise_status(st, rc, 1, path_str);
        goto finally;
    }
    StoreObject *s = (StoreObject *)PyType_GenericAlloc(st->StoreType, 0);
    if (s == NULL) {
        ans_store_free(store);
        goto finally;
    }
    s->store = store;
    s->path = Py_NewRef(path_str);
    s->pid = current_pid();
    result = (PyObject *)s;
finally:
    Py_XDECREF(path_str);
    Py_XDECREF(path_bytes);
    return result;
}

static PyObject *core_version(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return PyUnicode_FromString(ans_version());
}

/* ---------------------------------------------------------------------------------------------- */
/* convert: ans_convert (collections) - used by annstream/_convert.py                              */

typedef struct convert_cb {
    PyObject *progress; /* callable(done, total) or None */
    int failed;         /* the callback raised (or a signal arrived): the exception is pending */
} convert_cb;

/* Called on the converting thread without the GIL: take it briefly, let signal handlers run
 * (KeyboardInterrupt cancels) and report progress. */
static int convert_progress(void *user, uint64_t done, uint64_t total) {
    convert_cb *cb = user;
    PyGILState_STATE g = PyGILState_Ensure();
    int stop = 0;
    if (cb->failed || PyErr_CheckSignals() < 0) {
        stop = 1;
    } else if (cb->progress != Py_None) {
        PyObject *r = PyObject_CallFunction(cb->progress, "KK", (unsigned long long)done,
                                            (unsigned long long)total);
        if (r == NULL) {
            stop = 1;
        }
        Py_XDECREF(r);
    }
    if (stop) {
        cb->failed = 1;
    }
    PyGILState_Release(g);
    return stop;
}

/* A tuple of str / bytes -> a PyMem array of C strings borrowed from the tuple's items (UTF-8 for
 * str when `fs` is 0, else bytes expected). `*tuple` keeps them alive. */
static const char **convert_strings(PyObject *seq, PyObject **tuple, size_t *n, const char *what) {
    *tuple = NULL;
    *n = 0;
    if (seq == Py_None) {
        return NULL;
    }
    *tuple = PySequence_Tuple(seq);
    if (*tuple == NULL) {
        return NULL;
    }
    Py_ssize_t len = PyTuple_GET_SIZE(*tuple);
    const char **v = PyMem_Calloc((size_t)len + 1, sizeof *v);
    if (v == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        PyObject *it = PyTuple_GET_ITEM(*tuple, i);
        if (PyBytes_Check(it)) {
            v[i] = PyBytes_AS_STRING(it);
        } else if (PyUnicode_Check(it)) {
            v[i] = PyUnicode_AsUTF8(it);
            if (v[i] == NULL) {
                PyMem_Free(v);
                return NULL;
            }
        } else {
            PyErr_Format(PyExc_TypeError, "%s[%zd] is not a str", what, i);
            PyMem_Free(v);
            return NULL;
        }
    }
    *n = (size_t)len;
    return v;
}

static PyObject *core_convert(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"inputs", "output", "shuffle", "seed", "dataset_size_rows",
                             "dataset_size_bytes", "var", "var_names", "obs", "layers", "obsm",
                             "n_obs_per_chunk", "shard_size", "compressor", "memory", "threads",
                             "append", "overwrite", "progress", "groupby", NULL};
    PyObject *inputs = NULL, *output_bytes = NULL, *var_names = Py_None, *obs = Py_None;
    PyObject *groupby = Py_None;
    PyObject *layers = Py_None, *obsm = Py_None, *progress = Py_None;
    ans_convert_options o = ANS_CONVERT_OPTIONS_INIT;
    int shuffle = 1, var = 0, compressor = 0, threads = 0, append = 0, overwrite = 0;
    unsigned long long seed = 0, ds_rows = 0, ds_bytes = o.dataset_size_bytes;
    unsigned long long chunk = 64, shard = o.shard_size, memory = o.memory;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&|pKKKiOOOOKKiKippOO:convert", kwlist,
                                     &inputs, PyUnicode_FSConverter, &output_bytes, &shuffle,
                                     &seed, &ds_rows, &ds_bytes, &var, &var_names, &obs, &layers,
                                     &obsm, &chunk, &shard, &compressor, &memory, &threads,
                                     &append, &overwrite, &progress, &groupby)) {
        return NULL;
    }
    module_state *st = state_of_module(module);
    PyObject *t_in = NULL, *t_var = NULL, *t_obs = NULL, *t_layers = NULL, *t_obsm = NULL;
    PyObject *t_groupby = NULL;
    const char **c_in = NULL, **c_var = NULL, **c_obs = NULL, **c_layers = NULL, **c_obsm = NULL;
    const char **c_groupby = NULL;
    PyObject *result = NULL;
    size_t n_in = 0;
    if (progress != Py_None && !PyCallable_Check(progress)) {
        PyErr_SetString(PyExc_TypeError, "progress must be callable or None");
        goto done;
    }
    c_in = convert_strings(inputs, &t_in, &n_in, "inputs");
    if (c_in == NULL && PyErr_Occurred()) {
        goto done;
    }
    c_var = convert_strings(var_names, &t_var, &o.n_var_names, "var");
    if (c_var == NULL && PyErr_Occurred()) {
        goto done;
    }
    c_obs = convert_strings(obs, &t_obs, &o.n_obs_columns, "obs");
    if (c_obs == NULL && PyErr_Occurred()) {
        goto done;
    }
    c_groupby = convert_strings(groupby, &t_groupby, &o.n_groupby, "groupby");
    if (c_groupby == NULL && PyErr_Occurred()) {
        goto done;
    }
    c_layers = convert_strings(layers, &t_layers, &o.n_layers, "layers");
    if (c_layers == NULL && PyErr_Occurred()) {
        goto done;
    }
    c_obsm = convert_strings(obsm, &t_obsm, &o.n_obsm, "obsm");
    if (c_obsm == NULL && PyErr_Occurred()) {
        goto done;
    }
    o.seed = seed;
    o.shuffle = shuffle;
    o.dataset_size_rows = ds_rows;
    o.dataset_size_bytes = ds_bytes;
    o.var = (ans_convert_var)var;
    o.var_names = c_var;
    o.obs_columns = c_obs;
    o.groupby = c_groupby;
    o.layers = c_layers;
    o.obsm = c_obsm;
    o.n_obs_per_chunk = chunk;
    o.shard_size = shard;
    o.compressor = (ans_convert_compressor)compressor;
    o.memory = memory;
    o.threads = threads;
    o.append = append;
    o.overwrite = overwrite;
    convert_cb cb = {progress, 0};
    o.progress = convert_progress;
    o.progress_user = &cb;
    const char *output = PyBytes_AS_STRING(output_bytes);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ans_convert(c_in ? c_in : (const char **)&output, c_in ? n_in : 0, output, &o);
    Py_END_ALLOW_THREADS
    if (rc != ANS_OK) {
        if (!(cb.failed && PyErr_Occurred())) {
            raise_status(st, rc, 0, NULL);
        }
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(c_in);
    PyMem_Free(c_var);
    PyMem_Free(c_obs);
    PyMem_Free(c_groupby);
    PyMem_Free(c_layers);
    PyMem_Free(c_obsm);
    Py_XDECREF(t_in);
    Py_XDECREF(t_var);
    Py_XDECREF(t_obs);
    Py_XDECREF(t_groupby);
    Py_XDECREF(t_layers);
    Py_XDECREF(t_obsm);
    Py_XDECREF(output_bytes);
    return result;
}

/* end of the convert section */
/* ---------------------------------------------------------------------------------------------- */

static PyMethodDef core_methods[] = {
    {"open", (PyCFunction)(void (*)(void))core_open, METH_VARARGS | METH_KEYWORDS,
     "open(path, threads=0)\n--\n\nOpen an AnnData store (zarr v2/v3 directory or .h5ad file)."},
    {"loader", (PyCFunction)(void (*)(void))core_loader, METH_VARARGS | METH_KEYWORDS,
     "loader(stores, key='X', batch_size=1, chunk_size=512, preload_nchunks=32, shuffle=False, "
     "drop_last=False, replacement=False, num_samples=0, seed=0, epoch=0, partition=0, "
     "n_partitions=1, prefetch=2, threads=0, densify=False, out_dtype=None, return_index=False, "
     "custom_plans=False)\n--\n\nMake a C loader over the stores (starts no thread)."},
    {"version", core_version, METH_NOARGS, "version()\n--\n\nVersion of the linked C library."},
    {"convert", (PyCFunction)(void (*)(void))core_convert, METH_VARARGS | METH_KEYWORDS,
     "convert(inputs, output, shuffle=True, seed=0, ...)\n--\n\nans_convert (see annstream.convert)."},
    {NULL, NULL, 0, NULL},
};

/* ---------------------------------------------------------------------------------------------- */
/* module init (multi-phase)                                                                       */

static int add_type(PyObject *module, PyType_Spec *spec, PyTypeObject **slot) {
    PyObject *type = PyType_FromModuleAndSpec(module, spec, NULL);
    if (type == NULL) {
        return -1;
    }
    *slot = (PyTypeObject *)type;
    return PyModule_AddType(module, (PyTypeObject *)type);
}

static int core_exec(PyObject *module) {
    module_state *st = state_of_module(module);
    st->FormatError = PyErr_NewExceptionWithDoc(
        "annstream.FormatError",
        "The store is not a readable AnnData store: corrupt, truncated, inconsistent or using an\n"
        "unsupported encoding. The message names the file, the element and the reason.",
        PyExc_ValueError, NULL);
    if (st->FormatError == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "FormatError", st->FormatError) < 0) {
        return -1;
    }
    if (add_type(module, &Buffer_spec, &st->BufferType) < 0 ||
        add_type(module, &Rows_spec, &st->RowsType) < 0 ||
        add_type(module, &Store_spec, &st->StoreType) < 0 ||
        add_type(module, &Element_spec, &st->ElementType) < 0 ||
        add_type(module, &Batch_spec, &st->BatchType) < 0 ||
        add_type(module, &Loader_spec, &st->LoaderType) < 0) {
        return -1;
    }
    if (PyModule_AddStringConstant(module, "__version__", ans_version()) < 0) {
        return -1;
    }
    return 0;
}

static int core_traverse(PyObject *module, visitproc visit, void *arg) {
    module_state *st = state_of_module(module);
    Py_VISIT(st->FormatError);
    Py_VISIT(st->StoreType);
    Py_VISIT(st->ElementType);
    Py_VISIT(st->RowsType);
    Py_VISIT(st->BufferType);
    Py_VISIT(st->LoaderType);
    Py_VISIT(st->BatchType);
    return 0;
}

static int core_clear(PyObject *module) {
    module_state *st = state_of_module(module);
    Py_CLEAR(st->FormatError);
    Py_CLEAR(st->StoreType);
    Py_CLEAR(st->ElementType);
    Py_CLEAR(st->RowsType);
    Py_CLEAR(st->BufferType);
    Py_CLEAR(st->LoaderType);
    Py_CLEAR(st->BatchType);
    return 0;
}

static void core_free(void *module) {
    core_clear((PyObject *)module);
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, (void *)core_exec},
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "annstream._core",
    .m_doc = "C extension of annstream: a thin layer over the annstream C library.",
    .m_size = sizeof(module_state),
    .m_methods = core_methods,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC PyInit__core(void); /* the one exported symbol */

PyMODINIT_FUNC PyInit__core(void) {
    return PyModuleDef_Init(&core_module);
}
