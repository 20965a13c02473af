# The store's GPU tier (ctest label `gpu`), included from tests/gpu/CMakeLists.txt. Built
# only with CUDA; the tests skip cleanly at run time when no device is present.
if(KVSTASH_HAVE_CUDA AND TARGET kvstash_store AND TARGET kvstash_codec_cuda)
  kvstash_test(store_gpu_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/store_gpu_test.cc
    DEPS kvstash_store kvstash_codec CUDA::cudart absl::failure_signal_handler absl::symbolize
    LABELS gpu)
endif()
