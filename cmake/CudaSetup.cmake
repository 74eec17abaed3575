# Decide whether to build the CUDA kernels, find nvcc, and turn TORCH_CUDA_ARCH_LIST into
# CMAKE_CUDA_ARCHITECTURES. Sets TORCHCV_EXT_WITH_CUDA (ON/OFF) and TORCHCV_EXT_CUDA_ARCHS.
#
# TORCHCV_EXT_CUDA = AUTO (default): CUDA kernels whenever torch is a CUDA build and nvcc is found.
#                  = ON: same, but a missing nvcc / CPU-only torch is an error.
#                  = OFF: CPU kernels only.
# No GPU is needed to build.

set(TORCHCV_EXT_CUDA "AUTO" CACHE STRING "Build CUDA kernels: AUTO, ON or OFF")
string(TOUPPER "${TORCHCV_EXT_CUDA}" TORCHCV_EXT_CUDA)
set(TORCHCV_EXT_WITH_CUDA OFF)
set(TORCHCV_EXT_CUDA_ARCHS "")

function(_torchcv_cuda_unavailable why)
  if(TORCHCV_EXT_CUDA STREQUAL "ON")
    message(FATAL_ERROR "TORCHCV_EXT_CUDA=ON but ${why}")
  endif()
  message(STATUS "torchcv_ext: CUDA kernels not built: ${why}")
endfunction()

if(TORCHCV_EXT_CUDA STREQUAL "OFF")
  message(STATUS "torchcv_ext: CUDA kernels disabled (TORCHCV_EXT_CUDA=OFF)")
elseif(TORCH_HIP OR NOT TORCH_CUDA_VERSION)
  _torchcv_cuda_unavailable("torch ${TORCH_VERSION} is not a CUDA build")
else()
  # nvcc: CUDACXX / CMAKE_CUDA_COMPILER, then CUDA_HOME / CUDA_PATH, /usr/local/cuda, PATH.
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    find_program(TORCHCV_NVCC nvcc
      HINTS "$ENV{CUDA_HOME}/bin" "$ENV{CUDA_PATH}/bin" "/usr/local/cuda/bin"
      NO_CACHE)
    if(TORCHCV_NVCC)
      set(CMAKE_CUDA_COMPILER "${TORCHCV_NVCC}")
    endif()
  endif()
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    _torchcv_cuda_unavailable("nvcc was not found (set CUDA_HOME or CUDACXX)")
  else()
    if(CMAKE_CUDA_COMPILER)
      get_filename_component(_nvcc_bin "${CMAKE_CUDA_COMPILER}" DIRECTORY)
      get_filename_component(_cuda_root "${_nvcc_bin}" DIRECTORY)
      # FindCUDAToolkit (used by enable_language) looks here for cudart.
      set(CUDAToolkit_ROOT "${_cuda_root}")
    endif()

    # Architectures: TORCH_CUDA_ARCH_LIST ("8.0;9.0", "8.0 9.0+PTX", "9.0a") like torch.utils.cpp_extension.
    # The environment wins; otherwise the list of the previous configure of this build dir (so a
    # re-configure triggered by a new source file keeps it); otherwise the default.
    if(DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT "$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
      set(_arch_list "$ENV{TORCH_CUDA_ARCH_LIST}")
    elseif(TORCHCV_EXT_ARCH_LIST_USED)
      set(_arch_list "${TORCHCV_EXT_ARCH_LIST_USED}")
    else()
      set(_arch_list "8.0;8.6;9.0+PTX")
    endif()
    set(TORCHCV_EXT_ARCH_LIST_USED "${_arch_list}" CACHE INTERNAL "TORCH_CUDA_ARCH_LIST of the last configure")
    string(REPLACE " " ";" _arch_list "${_arch_list}")
    set(_archs "")
    foreach(_a IN LISTS _arch_list)
      if(_a STREQUAL "")
        continue()
      endif()
      set(_ptx OFF)
      if(_a MATCHES "\\+PTX$")
        set(_ptx ON)
        string(REGEX REPLACE "\\+PTX$" "" _a "${_a}")
      endif()
      if(NOT _a MATCHES "^([0-9]+)\\.([0-9]+)([af]?)$")
        message(FATAL_ERROR "TORCH_CUDA_ARCH_LIST entry '${_a}' is not like 8.0, 9.0a or 8.6+PTX")
      endif()
      set(_sm "${CMAKE_MATCH_1}${CMAKE_MATCH_2}${CMAKE_MATCH_3}")
      list(APPEND _archs "${_sm}-real")
      if(_ptx)
        list(APPEND _archs "${_sm}-virtual")
      endif()
    endforeach()
    set(CMAKE_CUDA_ARCHITECTURES "${_archs}")
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)  # share the CUDA runtime torch already loaded

    include(CheckLanguage)
    check_language(CUDA)
    if(NOT CMAKE_CUDA_COMPILER)
      _torchcv_cuda_unavailable("CMake could not use nvcc (check_language(CUDA) failed)")
    else()
      enable_language(CUDA)
      find_package(CUDAToolkit REQUIRED)
      set(TORCHCV_EXT_WITH_CUDA ON)
      set(TORCHCV_EXT_CUDA_ARCHS "${_arch_list}")
      message(STATUS "torchcv_ext: CUDA kernels ON, nvcc ${CMAKE_CUDA_COMPILER_VERSION}, "
                     "archs ${CMAKE_CUDA_ARCHITECTURES}")
    endif()
  endif()
endif()
