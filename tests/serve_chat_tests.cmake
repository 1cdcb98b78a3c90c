# Tests of the chat templates against fixtures rendered by jinja2 (included from
# tests/CMakeLists.txt; regenerate the fixtures with scripts/make_chat_fixtures.py).
if(TARGET kvault_chat)
  add_executable(chat_template_test chat_template_test.cc)
  target_link_libraries(chat_template_test PRIVATE kvault_chat nlohmann_json::nlohmann_json GTest::gtest_main)
  target_compile_definitions(chat_template_test PRIVATE
    KVAULT_CHAT_FIXTURES_DIR="${CMAKE_CURRENT_SOURCE_DIR}/fixtures/chat")
  gtest_discover_tests(chat_template_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)
endif()
