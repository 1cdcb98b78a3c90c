# kvault_cuda: host<->GPU KV transfers (kvault::gpu, src/gpu/cuda_transfer.h), included from the
# top CMakeLists.txt after kvault_store.
#   CUDA toolkit found        -> cuda_transfer.cc over CUDA::cudart, KVAULT_WITH_CUDA=1
#   ... and nvcc works        -> + copy_kernels.cu (ScatterFromStaging), KVAULT_WITH_CUDA_KERNELS=1
#                                (-DKVAULT_CUDA_KERNELS=OFF skips it: ScatterFromStaging Unavailable)
#   no toolkit                -> cuda_transfer_none.cc: the same API, every call Unavailable
# Both definitions are PUBLIC so users can tell; the header itself does not depend on them.
# Hide the toolkit with -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON.
option(KVAULT_CUDA_KERNELS "Compile src/gpu/copy_kernels.cu when nvcc is found" ON)
find_package(CUDAToolkit QUIET)

set(_kvault_cuda_kernels OFF)
if(CUDAToolkit_FOUND AND KVAULT_CUDA_KERNELS)
  include(CheckLanguage)
  # H100/H200 unless the user chose (e.g. -DCMAKE_CUDA_ARCHITECTURES=native or "80;90").
  set(CMAKE_CUDA_ARCHITECTURES 90 CACHE STRING "CUDA architectures for kvault's kernels")
  check_language(CUDA)
  # check_language keeps a CMAKE_CUDA_COMPILER given by the user: a path that does not exist
  # means no kernels rather than a failed configure.
  if(CMAKE_CUDA_COMPILER AND (EXISTS "${CMAKE_CUDA_COMPILER}" OR NOT IS_ABSOLUTE "${CMAKE_CUDA_COMPILER}"))
    enable_language(CUDA)
    set(_kvault_cuda_kernels ON)
    # The .cu includes cuda_transfer.h (C++20). Older CMake (3.25) knows no C++20 flag for
    # nvcc although nvcc has had -std=c++20 since CUDA 12.0: tell it.
    if(NOT "cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES AND CMAKE_CUDA_COMPILER_ID STREQUAL "NVIDIA"
       AND CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.0)
      set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_COMPILE_FEATURES cuda_std_20)
      list(APPEND CMAKE_CUDA_COMPILE_FEATURES cuda_std_20)
    endif()
  endif()
endif()

if(CUDAToolkit_FOUND)
  add_library(kvault_cuda STATIC src/gpu/cuda_transfer.cc)
  target_link_libraries(kvault_cuda PUBLIC kvault_store PRIVATE CUDA::cudart)
  target_compile_definitions(kvault_cuda PUBLIC KVAULT_WITH_CUDA=1)
  if(_kvault_cuda_kernels)
    target_sources(kvault_cuda PRIVATE src/gpu/copy_kernels.cu)
    target_compile_definitions(kvault_cuda PUBLIC KVAULT_WITH_CUDA_KERNELS=1)
    # The shared runtime, like CUDA::cudart above: one runtime per process, not also the static one.
    set_target_properties(kvault_cuda PROPERTIES CUDA_RUNTIME_LIBRARY Shared
      CUDA_STANDARD 20 CUDA_STANDARD_REQUIRED ON CUDA_EXTENSIONS OFF)
    # nvcc takes host-compiler flags (the directory's -Wall..., -fsanitize=...) only through
    # -Xcompiler: rewrite the inherited options per language.
    get_target_property(_kvault_cuda_opts kvault_cuda COMPILE_OPTIONS)
    if(_kvault_cuda_opts)
      set(_kvault_cuda_rewritten "")
      foreach(_opt IN LISTS _kvault_cuda_opts)
        list(APPEND _kvault_cuda_rewritten
          "$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=${_opt}>" "$<$<NOT:$<COMPILE_LANGUAGE:CUDA>>:${_opt}>")
      endforeach()
      set_property(TARGET kvault_cuda PROPERTY COMPILE_OPTIONS "${_kvault_cuda_rewritten}")
    endif()
  endif()
  message(STATUS "kvault_cuda: CUDA ${CUDAToolkit_VERSION}, kernels ${_kvault_cuda_kernels}"
                 " (CMAKE_CUDA_ARCHITECTURES ${CMAKE_CUDA_ARCHITECTURES})")
else()
  add_library(kvault_cuda STATIC src/gpu/cuda_transfer_none.cc)
  target_link_libraries(kvault_cuda PUBLIC kvault_store)
  message(STATUS "kvault_cuda: CUDA toolkit not found, building the fallback (every call Unavailable)")
endif()
target_include_directories(kvault_cuda PUBLIC include src)
