/* A C ABI over kvstash's C++ codec (kernels/include/kvstash/kernels/{format,codec}.h), so
 * that tools in other languages (tools/fidelity loads it with Python ctypes) run the real
 * encoder and decoder rather than a re-implementation.
 *
 * Every function returns 0 on success, or a nonzero absl::StatusCode with the status
 * message copied (NUL-terminated, truncated) into err[0, err_len) when err is non-null.
 * No function allocates memory the caller must free: the caller sizes buffers with
 * kvs_chunk_bytes / kvs_decoded_elements. Thread-safe like the codec itself. */
#ifndef KVSTASH_CODEC_CAPI_H_
#define KVSTASH_CODEC_CAPI_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVS_CAPI_VERSION 1

/* Chunk geometry; input layout [L][2][T][H][D]. dtype: 1 fp16, 2 bf16. */
typedef struct kvs_shape {
  uint32_t num_layers;
  uint32_t num_tokens;
  uint32_t num_heads;
  uint32_t head_dim;
  uint32_t dtype;
} kvs_shape;

/* Codec configuration (docs/format.md section 2). preset: 0 custom, 1 fp16, 2 kivi-2,
 * 3 asymkv-1.5, 4 xquant (informational, written to the header). */
typedef struct kvs_config {
  uint32_t raw;
  uint32_t k_q;
  uint32_t v_q;
  uint32_t k_m;
  uint32_t v_m;
  float eta1;
  float eta2;
  uint32_t preset;
} kvs_config;

int kvs_capi_version(void);
/* "avx2" or "scalar": the path the fast implementation takes in this process. */
const char* kvs_fast_path_name(void);

/* The configuration of a named preset ("fp16", "kivi-2", "asymkv-1.5", "xquant"). */
int kvs_preset_config(const char* name, uint32_t num_layers, kvs_config* out, char* err,
                      size_t err_len);
/* Validates shape and config; *bytes = total stored chunk bytes. */
int kvs_chunk_bytes(const kvs_shape* shape, const kvs_config* config, uint64_t* bytes,
                    char* err, size_t err_len);
/* The paper's equivalent bits (codes only) and the true stored bits per element. */
int kvs_bits(const kvs_shape* shape, const kvs_config* config, double* equivalent_bits,
             double* true_bits, char* err, size_t err_len);

/* Encodes `in` (shape elements of 16-bit values, layout [L][2][T][H][D], shape->dtype)
 * into out[0, *out_size). out_cap must be >= kvs_chunk_bytes. impl: 0 fast, 1 reference. */
int kvs_encode(const kvs_shape* shape, const kvs_config* config, const uint16_t* in,
               uint64_t in_elements, uint8_t* out, uint64_t out_cap, uint64_t* out_size,
               int impl, char* err, size_t err_len);

/* Number of 16-bit elements a decoded slice [layer_begin, layer_end) x [head_begin,
 * head_end) of a chunk has (ends of 0 mean "to the last"). Parses and verifies the header. */
int kvs_decoded_elements(const uint8_t* chunk, uint64_t size, uint32_t layer_begin,
                         uint32_t layer_end, uint32_t head_begin, uint32_t head_end,
                         uint64_t* elements, char* err, size_t err_len);

/* Decodes the slice into out ([l1-l0][2][T][h1-h0][D], out_dtype 1 fp16 / 2 bf16).
 * out_elements must equal kvs_decoded_elements. impl: 0 fast, 1 reference. */
int kvs_decode(const uint8_t* chunk, uint64_t size, uint32_t layer_begin, uint32_t layer_end,
               uint32_t head_begin, uint32_t head_end, uint32_t out_dtype, uint16_t* out,
               uint64_t out_elements, int impl, char* err, size_t err_len);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* KVSTASH_CODEC_CAPI_H_ */
