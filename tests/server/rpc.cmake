# Tests of the gRPC front end, the daemon configuration and a real-socket round trip.
# Included from tests/server/CMakeLists.txt: include(rpc.cmake)
if(TARGET kvstash_config)
  kvstash_test(rpc_config_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/rpc_config_test.cc
    DEPS kvstash_config)
  target_compile_definitions(rpc_config_test PRIVATE
    KVSTASH_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
endif()
if(TARGET kvstash_rpc AND TARGET kvstash_store)
  kvstash_test(rpc_status_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/rpc_status_test.cc
    DEPS kvstash_rpc)
  kvstash_test(rpc_service_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/rpc_service_test.cc
    DEPS kvstash_rpc kvstash_store kvstash_codec)
  kvstash_test(region_registry_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/region_registry_test.cc
    DEPS kvstash_rpc)
  # Hostile inputs of issue 12: huge paged layouts, regions truncated under a request
  # (SIGBUS), a Get racing re-puts, symlinked paths, per-namespace region limits.
  kvstash_test(rpc_hostile_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/rpc_hostile_test.cc
    DEPS kvstash_rpc kvstash_store kvstash_codec)
  kvstash_test(region_guard_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/region_guard_test.cc
    DEPS kvstash_rpc)
  kvstash_test(rpc_roundtrip_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/rpc_roundtrip_test.cc
    DEPS kvstash_rpc kvstash_store kvstash_codec)
  kvstash_test(rpc_stats_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/rpc_stats_test.cc
    DEPS kvstash_rpc kvstash_store kvstash_codec)
endif()
if(TARGET kvstash_auth AND TARGET kvstash_config)
  kvstash_test(auth_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/auth_test.cc
    DEPS kvstash_auth kvstash_config absl::strings)
endif()
