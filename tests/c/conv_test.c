/* Runs a generated plan whose fused concat+conv reads spilled inputs by streaming, with
 * real int8 data, and writes the conv output for comparison with TFLite's reference.
 *
 *   conv_test JOB STORAGE_FILE OUT
 * JOB (little-endian): int32 in_c, out_c, k_h, k_w, stride_h, stride_w, same, input_offset,
 * output_offset, act_min, act_max; int8 filter[out_c*k_h*k_w*in_c]; int32 bias[out_c],
 * multiplier[out_c], shift[out_c]; then the bytes of each concat input in concat order.
 * OUT gets the fused concat's output (the virtual concatenation, materialised) followed
 * by the fused conv's output.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tinyplan_plan.h"
#include "tp_kernels.h"

static uint8_t arena[TP_ARENA_BYTES];
static tp_runtime rt;

static void die(const char *what, int code) {
  fprintf(stderr, "FAIL %s (%d)\n", what, code);
  exit(1);
}

static void *slurp(FILE *f, size_t n) {
  void *p = malloc(n ? n : 1); /* test code: the runtime itself never allocates */
  if (p == NULL || fread(p, 1, n, f) != n) die("short job file", 0);
  return p;
}

int main(int argc, char **argv) {
  const tp_plan *P = &tinyplan_plan;
  tp_storage storage;
  tp_file_storage file;
  tp_storage *ptrs[1];
  tp_conv_params p;
  int32_t hdr[11];
  const uint8_t *inputs[8];
  const tp_op *conv = NULL, *concat;
  const int32_t *cio;
  uint32_t i, step, conv_step = 0;
  int32_t out_tensor;
  FILE *job, *out;
  if (argc != 4 || TP_NUM_STORAGES != 1) die("usage: conv_test JOB STORAGE_FILE OUT", argc);
  for (i = 0; i < P->num_ops; i++)
    if (P->ops[i].fused == TP_OP_FUSED_CONV) {
      conv = &P->ops[i];
      conv_step = i + 1;
    }
  if (conv == NULL) die("no fused conv in the plan", 0);
  concat = &P->ops[conv->partner];
  cio = P->op_io + concat->io_start;
  out_tensor = P->op_io[conv->io_start + conv->num_inputs];
  job = fopen(argv[1], "rb");
  if (job == NULL || fread(hdr, sizeof hdr[0], 11, job) != 11) die("cannot read job", 0);
  memset(&p, 0, sizeof p);
  p.in_c = hdr[0];
  p.out_c = hdr[1];
  p.k_h = hdr[2];
  p.k_w = hdr[3];
  p.stride_h = hdr[4];
  p.stride_w = hdr[5];
  p.dilation_h = p.dilation_w = 1;
  p.input_offset = hdr[7];
  p.output_offset = hdr[8];
  p.act_min = hdr[9];
  p.act_max = hdr[10];
  p.in_h = (int32_t)P->tensors[cio[0]].height;
  p.in_w = (int32_t)P->tensors[cio[0]].width;
  p.out_h = (int32_t)P->tensors[out_tensor].height;
  p.out_w = (int32_t)P->tensors[out_tensor].width;
  if (hdr[6]) {
    p.pad_top = tp_same_padding(p.in_h, p.out_h, p.k_h, p.stride_h, 1);
    p.pad_left = tp_same_padding(p.in_w, p.out_w, p.k_w, p.stride_w, 1);
  }
  p.filter = (const int8_t *)slurp(job, (size_t)p.out_c * p.k_h * p.k_w * p.in_c);
  p.bias = (const int32_t *)slurp(job, 4u * (size_t)p.out_c);
  p.out_multiplier = (const int32_t *)slurp(job, 4u * (size_t)p.out_c);
  p.out_shift = (const int32_t *)slurp(job, 4u * (size_t)p.out_c);
  for (i = 0; i < concat->num_inputs && i < 8; i++)
    inputs[i] = (const uint8_t *)slurp(job, P->tensors[cio[i]].nbytes);
  fclose(job);

  if (tp_file_storage_open(&storage, &file, argv[2], P->storages[0].capacity) != TP_OK)
    die("storage", 0);
  ptrs[0] = &storage;
  if (tp_runtime_init(&rt, P, arena, sizeof arena, ptrs) != TP_OK) die("init", rt.error);
  tp_runtime_begin(&rt);
  memset(arena, 0x77, sizeof arena);
  for (step = 0; step < P->num_steps; step++) {
    if (tp_before_op(&rt, step) != TP_OK) die("before op", rt.error);
    if (step == conv_step) {
      tp_slice slices[8];
      int n = 0, k;
      const tp_segment *o = tp_segment_at(P, (uint32_t)out_tensor, -1, step);
      /* First the plain fused concat (into test memory), then the streams again for the
       * conv: tp_before_op re-opens them at the start of the stored data. */
      int8_t *cat = (int8_t *)malloc((size_t)p.in_h * p.in_w * p.in_c);
      for (i = 0; i < concat->num_inputs; i++) {
        k = tp_input_slices(&rt, (uint32_t)cio[i], step, slices + n, 8 - n);
        if (k < 0) die("slices", k);
        n += k;
      }
      if (cat == NULL) die("malloc", 0);
      k = tp_fused_concat(&rt, slices, n, (uint32_t)(p.in_h * p.in_w), 1u, (uint8_t *)cat);
      if (k != TP_OK) die("fused concat", k);
      out = fopen(argv[3], "wb");
      if (out == NULL) die("output", 0);
      fwrite(cat, 1, (size_t)p.in_h * p.in_w * p.in_c, out);
      free(cat);
      if (tp_before_op(&rt, step) != TP_OK) die("re-open streams", rt.error);
      n = 0;
      for (i = 0; i < concat->num_inputs; i++) {
        k = tp_input_slices(&rt, (uint32_t)cio[i], step, slices + n, 8 - n);
        if (k < 0) die("slices", k);
        n += k;
      }
      k = tp_fused_concat_conv2d(&rt, &p, slices, n, (int8_t *)(arena + o->offset));
      if (k != TP_OK) die("fused conv", k);
      fwrite(arena + o->offset, 1, P->tensors[out_tensor].nbytes, out);
      fclose(out);
    }
    /* Concat inputs get their data where they are created (part 0's offset if split). */
    for (i = 0; i < concat->num_inputs; i++) {
      const tp_tensor *t = &P->tensors[cio[i]];
      const tp_segment *s = tp_segment_at(P, (uint32_t)cio[i], t->split ? 0 : -1, step);
      const tp_segment *before = step ? tp_segment_at(P, (uint32_t)cio[i], t->split ? 0 : -1,
                                                      step - 1) : NULL;
      if (s != NULL && before == NULL && s == &P->segments[t->first_segment])
        memcpy(arena + s->offset, inputs[i], t->nbytes);
    }
    if (tp_after_op(&rt, step) != TP_OK) die("after op", rt.error);
  }
  tp_file_storage_close(&storage);
  printf("ok spilled=%u stored=%u\n", (unsigned)rt.spilled_raw, (unsigned)rt.spilled_stored);
  return 0;
}
