/* Decode one rectangle of a JPEG, at a DCT scale of 1/1, 1/2, 1/4 or 1/8, with libjpeg(-turbo).
 *
 * Only what the rectangle needs is decoded: rows above it are skipped (jpeg_skip_scanlines:
 * entropy-decoded, not transformed), columns outside it are left out from the iMCU boundary on
 * (jpeg_crop_scanline), and decoding stops after its last row. The pixels are those of decoding
 * the whole image at the same scale and cutting the rectangle out (the accurate integer IDCT and
 * fancy upsampling, libjpeg's defaults, as PIL and simplejpeg use), given a margin of 2 pixels.
 *
 *   decode_region(data, reduce, top, left, height, width, margin) -> (bytearray, warnings)
 *
 * ``top, left, height, width`` are in pixels of the image decoded at 1/``reduce``
 * (ceil(size / reduce) per side). The bytearray holds uint8 (height, width, 3) RGB, row-major.
 * ``warnings`` counts libjpeg's corrupt-data warnings met while decoding. Errors raise ValueError
 * with libjpeg's message; nothing in here calls exit() or leaves the process.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#if !defined(LIBJPEG_TURBO_VERSION_NUMBER) || LIBJPEG_TURBO_VERSION_NUMBER < 1005000
#error "libjpeg-turbo >= 1.5 is needed (jpeg_crop_scanline, jpeg_skip_scanlines)"
#endif

struct error_manager {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo) {
    struct error_manager *err = (struct error_manager *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    if (level < 0) cinfo->err->num_warnings++; /* corrupt-data warnings are counted, not printed */
}

static PyObject *decode_region(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data;
    int reduce, top, left, height, width, margin;
    if (!PyArg_ParseTuple(args, "y*iiiiii", &data, &reduce, &top, &left, &height, &width, &margin)) return NULL;
    if (reduce != 1 && reduce != 2 && reduce != 4 && reduce != 8) {
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "reduce must be 1, 2, 4 or 8, not %d", reduce);
        return NULL;
    }
    if (top < 0 || left < 0 || height <= 0 || width <= 0 || margin < 0) {
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "bad region top=%d left=%d height=%d width=%d margin=%d", top, left,
                     height, width, margin);
        return NULL;
    }

    struct jpeg_decompress_struct cinfo;
    struct error_manager err;
    PyObject *volatile out = NULL;
    JSAMPLE *volatile rows = NULL;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    err.message[0] = '\0';
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        free(rows);
        Py_XDECREF(out);
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, err.message[0] ? err.message : "libjpeg error");
        return NULL;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        snprintf(err.message, sizeof(err.message), "CMYK / YCCK JPEGs are not decoded here");
        longjmp(err.jump, 1);
    }
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)reduce;
    jpeg_start_decompress(&cinfo);
    const int image_h = (int)cinfo.output_height, image_w = (int)cinfo.output_width;
    if (top + height > image_h || left + width > image_w) {
        snprintf(err.message, sizeof(err.message), "region %dx%d at (%d, %d) outside the %dx%d image",
                 width, height, left, top, image_w, image_h);
        longjmp(err.jump, 1);
    }
    /* The decoded window: the box and `margin` pixels left, right and above it (within the image),
     * so that chroma upsampling at the box's edges sees the neighbours it sees in the whole image.
     * Rows below the box are never needed: libjpeg reads ahead what an output row depends on. */
    const int row0 = top - margin > 0 ? top - margin : 0, col0 = left - margin > 0 ? left - margin : 0;
    const int col1 = left + width + margin < image_w ? left + width + margin : image_w;
    JDIMENSION xoffset = (JDIMENSION)col0, crop_width = (JDIMENSION)(col1 - col0);
    jpeg_crop_scanline(&cinfo, &xoffset, &crop_width); /* xoffset moves down to an iMCU boundary */
    if (row0 > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)row0);

    out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)height * (Py_ssize_t)width * 3);
    if (out == NULL) {
        PyErr_Clear();
        snprintf(err.message, sizeof(err.message), "out of memory for a %dx%d region", width, height);
        longjmp(err.jump, 1);
    }
    unsigned char *dst = (unsigned char *)PyByteArray_AS_STRING(out);
    enum { CHUNK = 16 };
    const size_t stride = (size_t)crop_width * 3, shift = (size_t)(left - (int)xoffset) * 3;
    const size_t row_bytes = (size_t)width * 3;
    rows = malloc(stride * CHUNK);
    if (rows == NULL) {
        snprintf(err.message, sizeof(err.message), "out of memory");
        longjmp(err.jump, 1);
    }
    JSAMPROW pointers[CHUNK];
    for (int i = 0; i < CHUNK; i++) pointers[i] = rows + stride * (size_t)i;
    int next = row0; /* image row the next scanline holds */
    while (next < top + height) {
        int want = top + height - next < CHUNK ? top + height - next : CHUNK;
        JDIMENSION got = jpeg_read_scanlines(&cinfo, pointers, (JDIMENSION)want);
        if (got == 0) {
            snprintf(err.message, sizeof(err.message), "no scanline after row %d", next);
            longjmp(err.jump, 1);
        }
        for (int r = 0; r < (int)got; r++, next++)
            if (next >= top) memcpy(dst + (size_t)(next - top) * row_bytes, pointers[r] + shift, row_bytes);
    }
    long warnings = err.pub.num_warnings;
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    free(rows);
    PyBuffer_Release(&data);
    return Py_BuildValue("(Nl)", out, warnings);
}

static PyMethodDef methods[] = {
    {"decode_region", decode_region, METH_VARARGS,
     "decode_region(data, reduce, top, left, height, width, margin) -> (bytearray, warnings)\n\n"
     "uint8 (height, width, 3) RGB of the JPEG decoded at 1/reduce, only that rectangle (and margin\n"
     "pixels around it) decoded."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpegcrop", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__jpegcrop(void) {
    PyObject *mod = PyModule_Create(&module);
    if (mod != NULL) PyModule_AddIntConstant(mod, "LIBJPEG_TURBO_VERSION_NUMBER", LIBJPEG_TURBO_VERSION_NUMBER);
    return mod;
}
