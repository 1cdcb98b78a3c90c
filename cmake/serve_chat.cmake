# Chat templates of the supported model families for `kvault serve` (included from the top
# CMakeLists.txt; no LibTorch).
add_library(kvault_chat STATIC src/serve/chat_template.cc)
target_include_directories(kvault_chat PUBLIC include src)
target_link_libraries(kvault_chat PUBLIC kvault_store PRIVATE nlohmann_json::nlohmann_json)
