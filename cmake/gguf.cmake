# kvault_gguf: the GGUF reader and the ggml dequantizers (no LibTorch). Included from the top
# CMakeLists.txt after kvault_store (which provides kvault::Status).
add_library(kvault_gguf STATIC
  src/gguf/gguf_file.cc
  src/gguf/dequantize.cc
)
target_include_directories(kvault_gguf PUBLIC include src)
target_link_libraries(kvault_gguf PUBLIC kvault_store Threads::Threads)
# The block decoders are plain loops written for the auto-vectorizer, which -O2 (GCC 12's
# "very cheap" cost model) mostly leaves scalar: -O3 about doubles their throughput.
set_source_files_properties(src/gguf/dequantize.cc PROPERTIES COMPILE_OPTIONS "$<$<NOT:$<CONFIG:Debug>>:-O3>")
