# ctest gateopt_bench_smoke: fm_gateopt_bench on the CPU, small shape, T = 128, both stages and both branch kinds; f32
# and one thread for speed (LibTorch's CPU bf16 GEMM fallback is slow, and OpenMP threads spin badly on a loaded CPU).
# One warm-up step first, so the timed gate step runs with gates below 1 and the branches enter the loss.
# Each configuration runs on one "device" and on two (two threads sharing the CPU: data-parallel gate steps over 2
# samples, the layer-parallel calibration pipeline over 2 steps), which exercises the multi-device code paths.
# Passes when it exits 0 (it exits 1 on any error or non-finite loss) and prints one timing row per configuration.
execute_process(
  COMMAND "${BENCH}" --device cpu --shape small --seq 128 --steps 1 --warmup 1 --stage both --branch lightning,gdn
          --dtype f32 --threads 1 --devices 1,2 --samples 2 --pipeline-steps 2
  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "fm_gateopt_bench exited with ${rc}")
endif()
foreach(stage gates calibration)
  foreach(branch lightning gdn)
    if(NOT out MATCHES "\n${stage} +${branch} +128 +1 +[0-9.]+ +[0-9]+ +- +[0-9.e+-]+ +- +- +[-+0-9.e]+\n")
      message(FATAL_ERROR "no one-device timing row for ${stage} / ${branch} at T=128")
    endif()
    if(NOT out MATCHES "\n${stage} +${branch} +128 +2 +[0-9.]+ +[0-9]+ +[0-9.]+x +[0-9.e+-]+ +- +- +[-+0-9.e]+\n")
      message(FATAL_ERROR "no two-device timing row (with its speed-up) for ${stage} / ${branch} at T=128")
    endif()
  endforeach()
endforeach()
