# ctest hybrid_bench_smoke: fm_hybrid_bench on the CPU, small shape, T = 64 and 4 decode steps, once per branch kind;
# f32 and one thread for speed (LibTorch's CPU bf16 GEMM fallback is slow, and OpenMP threads spin badly on a loaded
# CPU). Passes when every run exits 0 (it exits 1 on any error or non-finite logits) and prints a timing row for the
# original and for the hybrid (with its speed-ups) at T = 64, and the JSON it wrote lists both.
set(json "${CMAKE_CURRENT_BINARY_DIR}/hybrid_bench_smoke.json")
foreach(branch lightning gla gdn)
  file(REMOVE "${json}")
  execute_process(
    COMMAND "${BENCH}" --device cpu --shape small --seq 64 --decode-steps 4 --reps 1 --warmup 1 --branch ${branch}
            --dtype f32 --threads 1 --json "${json}"
    OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  message("${out}${err}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "fm_hybrid_bench --branch ${branch} exited with ${rc}")
  endif()
  set(num "[0-9.]+")
  if(NOT out MATCHES "\noriginal +64 +${num} +${num} +- +${num} +- +${num} +- *\n")
    message(FATAL_ERROR "no original row at T=64 (--branch ${branch})")
  endif()
  if(NOT out MATCHES "\nhybrid +64 +${num} +${num} +${num}x +${num} +${num}x +${num} +- *\n")
    message(FATAL_ERROR "no hybrid row with speed-ups at T=64 (--branch ${branch})")
  endif()
  file(READ "${json}" text)
  string(JSON n LENGTH "${text}" results)
  string(JSON model0 GET "${text}" results 0 model)
  string(JSON model1 GET "${text}" results 1 model)
  string(JSON layers LENGTH "${text}" fa_layers)
  if(NOT n EQUAL 2 OR NOT model0 STREQUAL "original" OR NOT model1 STREQUAL "hybrid" OR NOT layers EQUAL 1)
    message(FATAL_ERROR "unexpected JSON (${n} results: ${model0}, ${model1}; ${layers} FA layers): ${text}")
  endif()
endforeach()
