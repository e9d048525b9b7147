# ctest driver: compiles one CUDA source to SASS for one architecture (ptxas included), so an
# instruction that architecture lacks (sm_90-only bulk copies, mbarrier transaction counts) used
# without a guard fails here, on any machine where nvcc is found, GPU or not.
#   -DNVCC=... -DSOURCE=... -DARCH=80 -DINCLUDE_DIRS="a|b" -DDEFINES="X=1|Y=2" -DWORK_DIR=...
file(MAKE_DIRECTORY "${WORK_DIR}")
string(REPLACE "|" ";" INCLUDE_DIRS "${INCLUDE_DIRS}")
string(REPLACE "|" ";" DEFINES "${DEFINES}")
set(args -std=c++20 --expt-relaxed-constexpr -O3 -gencode arch=compute_${ARCH},code=sm_${ARCH})
foreach(dir IN LISTS INCLUDE_DIRS)
  list(APPEND args "-I${dir}")
endforeach()
foreach(def IN LISTS DEFINES)
  list(APPEND args "-D${def}")
endforeach()
get_filename_component(name "${SOURCE}" NAME_WE)
execute_process(COMMAND "${NVCC}" ${args} -c "${SOURCE}" -o "${WORK_DIR}/${name}.sm_${ARCH}.o"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} does not compile for sm_${ARCH} (exit ${rc}):\n${out}${err}")
endif()
message("${SOURCE}: compiles for sm_${ARCH}")
