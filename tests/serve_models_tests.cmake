# `kvault serve` with several models (issue 20; included from openai_api_tests.cmake, engine
# ON only): the switching policy of the served-model set over real engines (model_set_test),
# and real server processes answered by a real HTTP client (tests/serve/multi_model_test.py).
if(TARGET kvault_openai)
  add_executable(model_set_test model_set_test.cc)
  target_compile_options(model_set_test PRIVATE ${TORCH_CXX_FLAGS})
  target_include_directories(model_set_test PRIVATE ${CMAKE_CURRENT_LIST_DIR}/engine)  # small_model.h
  target_link_libraries(model_set_test PRIVATE kvault_openai GTest::gtest_main)
  gtest_discover_tests(model_set_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)

  add_test(NAME serve_multi_model
    COMMAND python3 ${PROJECT_SOURCE_DIR}/tests/serve/multi_model_test.py $<TARGET_FILE:kvault>)
  set_tests_properties(serve_multi_model PROPERTIES TIMEOUT 300 RUN_SERIAL TRUE)
endif()
