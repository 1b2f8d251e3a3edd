// A small deterministic random number generator: xoshiro256** seeded through SplitMix64, with our own unbiased
// integer draw. The numbers depend only on the seed (and stream index), never on the platform or the standard
// library (no std::uniform_*_distribution), so data samples are reproducible everywhere.
#pragma once

#include <cstdint>

namespace fm {

// SplitMix64's output function (a bijection on 64-bit values).
uint64_t SplitMix64Mix(uint64_t x);

class Rng {
 public:
  // The four state words are the first four outputs of SplitMix64 started at `seed`.
  explicit Rng(uint64_t seed);

  // An independent stream for item `index` of a seeded sequence: Rng(StreamSeed(seed, index)).
  static Rng ForStream(uint64_t seed, uint64_t index) { return Rng(StreamSeed(seed, index)); }
  // SplitMix64Mix(SplitMix64Mix(seed + 0x9E3779B97F4A7C15) ^ index): distinct indices give distinct seeds.
  static uint64_t StreamSeed(uint64_t seed, uint64_t index);

  // The next 64 random bits (xoshiro256**).
  uint64_t Next();
  // Uniform on [0, n); n == 0 returns 0. Unbiased: draws below 2^64 mod n are rejected and redrawn, then the
  // draw is reduced mod n.
  uint64_t Uniform(uint64_t n);
  // Uniform on the closed range [lo, hi]: lo + Uniform(hi - lo + 1) (one draw even when hi == lo); returns lo
  // without drawing when hi < lo.
  int64_t UniformInRange(int64_t lo, int64_t hi);
  // Uniform on [0, 1) with 53 random bits: (Next() >> 11) * 2^-53.
  double UniformReal();

 private:
  uint64_t s_[4];
};

}  // namespace fm
