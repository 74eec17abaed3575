# Torch discovery without torch's own CMake package.
#
# torch's TorchConfig.cmake drags in Caffe2's CUDA logic, which wants nvrtc, cublas, cusparse, ...
# from a full CUDA toolkit. A torch extension needs far less: torch's headers, five shared
# libraries and two compile definitions. We ask the user's Python for them.
#
# Build isolation: pip runs this build in a temporary environment whose sys.path hides the user's
# site-packages (through PYTHONPATH + PYTHONNOUSERSITE and a sitecustomize). We run the query with
# those variables removed, so the extension is compiled against the torch the user will import,
# and no second torch is ever downloaded. Override with -DTORCHCV_EXT_PYTHON=/path/to/python.
#
# Outputs: TORCH_VERSION, TORCH_ROOT, TORCH_CUDA_VERSION, NVIDIA_PIP_INCLUDE_DIRS and the
# INTERFACE target torchcv_torch (CPU libraries) / torchcv_torch_cuda (CUDA libraries).

if(NOT TORCHCV_EXT_PYTHON)
  set(TORCHCV_EXT_PYTHON "${Python_EXECUTABLE}")
endif()

execute_process(
  COMMAND "${CMAKE_COMMAND}" -E env --unset=PYTHONPATH --unset=PYTHONNOUSERSITE --unset=PYTHONHOME
          "${TORCHCV_EXT_PYTHON}" "${CMAKE_CURRENT_LIST_DIR}/torch_query.py"
  OUTPUT_VARIABLE _tq_out
  ERROR_VARIABLE _tq_err
  RESULT_VARIABLE _tq_rc)
if(NOT _tq_rc EQUAL 0)
  message(FATAL_ERROR "torchcv_ext: querying torch failed (${_tq_rc}):\n${_tq_err}")
endif()

string(REPLACE "\n" ";" _tq_lines "${_tq_out}")
foreach(_line IN LISTS _tq_lines)
  if(_line MATCHES "^([A-Z0-9_]+)=(.*)$")
    set(_key "${CMAKE_MATCH_1}")
    set(_val "${CMAKE_MATCH_2}")
    set(${_key} "${_val}")
  endif()
endforeach()
if(DEFINED ERROR)
  message(FATAL_ERROR "torchcv_ext needs PyTorch installed before it is built: ${ERROR}\n"
                      "Install torch first (e.g. pip install torch), then pip install .")
endif()

message(STATUS "torchcv_ext: building against torch ${TORCH_VERSION} at ${TORCH_ROOT} "
               "(CUDA: '${TORCH_CUDA_VERSION}', python: ${PYTHON})")

set(_tlib "${TORCH_ROOT}/lib")
add_library(torchcv_torch INTERFACE)
target_include_directories(torchcv_torch SYSTEM INTERFACE
  "${TORCH_ROOT}/include" "${TORCH_ROOT}/include/torch/csrc/api/include")
target_compile_definitions(torchcv_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${TORCH_CXX11_ABI})
target_link_libraries(torchcv_torch INTERFACE
  "${_tlib}/libc10.so" "${_tlib}/libtorch_cpu.so" "${_tlib}/libtorch.so")

add_library(torchcv_torch_cuda INTERFACE)
target_link_libraries(torchcv_torch_cuda INTERFACE torchcv_torch
  "${_tlib}/libc10_cuda.so" "${_tlib}/libtorch_cuda.so")
if(NVIDIA_PIP_INCLUDE_DIRS)
  # AFTER: the real toolkit's headers (nvcc's own include dir) win over the pip copies.
  target_include_directories(torchcv_torch_cuda SYSTEM AFTER INTERFACE ${NVIDIA_PIP_INCLUDE_DIRS})
endif()
