# Imports LibTorch from the official `torch` wheel in the project's venv as the target fm::torch.
#
# torch's own TorchConfig.cmake insists on a CUDA toolkit whenever the wheel was built with CUDA (every Linux wheel
# on PyPI is), so CPU machines cannot use it. We import the libraries directly instead:
#   CPU build : libtorch_cpu + libc10 (the nvidia runtime libs they need come from the venv's nvidia/ packages)
#   CUDA build: + libtorch_cuda + libc10_cuda + CUDA::cudart, linked --no-as-needed so CUDA kernels register.
# Only targets that link fm::torch see torch's include paths (the wheel bundles protobuf headers of its own).
execute_process(
  COMMAND "${FLASHMORPH_PYTHON}" -c "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__); print(int(torch.backends.cuda.is_built()))"
  OUTPUT_VARIABLE _fm_torch_out RESULT_VARIABLE _fm_torch_rc OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _fm_torch_rc EQUAL 0)
  message(FATAL_ERROR "Cannot import torch with ${FLASHMORPH_PYTHON}. Run scripts/setup.sh or pass -DFLASHMORPH_PYTHON=...")
endif()
string(REPLACE "\n" ";" _fm_torch_out "${_fm_torch_out}")
list(GET _fm_torch_out 0 TORCH_ROOT)
list(GET _fm_torch_out 1 TORCH_VERSION)
list(GET _fm_torch_out 2 TORCH_CUDA_BUILT)
if(NOT TORCH_VERSION MATCHES "^2\\.11\\.")
  message(WARNING "torch ${TORCH_VERSION} found; FlashMorph is pinned to 2.11.x (the GPU image's version)")
endif()
message(STATUS "LibTorch ${TORCH_VERSION} from ${TORCH_ROOT} (CUDA built: ${TORCH_CUDA_BUILT})")

set(_fm_site "${TORCH_ROOT}/..")
file(GLOB _fm_nvidia_libdirs LIST_DIRECTORIES true "${_fm_site}/nvidia/*/lib")
set(FLASHMORPH_TORCH_RPATH "${TORCH_ROOT}/lib" ${_fm_nvidia_libdirs})

# CUDA: AUTO turns on when nvcc exists and the wheel carries CUDA.
set(FLASHMORPH_CUDA_ENABLED OFF)
if(NOT FLASHMORPH_CUDA STREQUAL "OFF" AND TORCH_CUDA_BUILT)
  include(CheckLanguage)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(FLASHMORPH_CUDA_ENABLED ON)
  elseif(FLASHMORPH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "FLASHMORPH_CUDA=ON but no CUDA compiler was found")
  endif()
elseif(FLASHMORPH_CUDA STREQUAL "ON")
  message(FATAL_ERROR "FLASHMORPH_CUDA=ON but ${TORCH_ROOT} is not a CUDA build of torch")
endif()
message(STATUS "FLASHMORPH_CUDA: ${FLASHMORPH_CUDA_ENABLED}")

add_library(fm_torch INTERFACE)
add_library(fm::torch ALIAS fm_torch)
target_include_directories(fm_torch SYSTEM INTERFACE
  "${TORCH_ROOT}/include" "${TORCH_ROOT}/include/torch/csrc/api/include")
target_compile_definitions(fm_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=1)
# Torch headers dominate compile time; keep debug info small in TUs that include them.
target_compile_options(fm_torch INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-g1 -Wno-unused-parameter -Wno-sign-compare>)
target_link_libraries(fm_torch INTERFACE "${TORCH_ROOT}/lib/libtorch_cpu.so" "${TORCH_ROOT}/lib/libc10.so")
if(FLASHMORPH_CUDA_ENABLED)
  target_compile_definitions(fm_torch INTERFACE FLASHMORPH_CUDA=1)
  target_link_libraries(fm_torch INTERFACE
    -Wl,--no-as-needed "${TORCH_ROOT}/lib/libtorch_cuda.so" "${TORCH_ROOT}/lib/libc10_cuda.so" -Wl,--as-needed
    CUDA::cudart)
endif()
foreach(_d IN LISTS FLASHMORPH_TORCH_RPATH)
  target_link_options(fm_torch INTERFACE "LINKER:-rpath,${_d}" "LINKER:-rpath-link,${_d}")
endforeach()
# at::parallel_for in our own code is serial unless the TU is built with OpenMP. Link the wheel's own libgomp (the
# one libtorch_cpu loads), not the compiler's, so one OpenMP runtime serves both.
target_compile_options(fm_torch INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-fopenmp>)
if(EXISTS "${TORCH_ROOT}/lib/libgomp.so.1")
  target_link_libraries(fm_torch INTERFACE "${TORCH_ROOT}/lib/libgomp.so.1")
else()
  target_link_libraries(fm_torch INTERFACE gomp)
endif()
