// Philox4x32-10 counter-based generator (Salmon et al., SC'11) and Gaussian draws.
//
// A stream is keyed by (seed, trajectory): the n-th normal of trajectory k depends on
// nothing else, which is what makes ensembles identical for any thread count or chunking.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace ntkflow {

class Philox {
 public:
  Philox(std::uint64_t seed, std::uint64_t stream)
      : key_{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)},
        stream_(stream) {}

  /// Four 32-bit words of block `block` of this stream.
  std::array<std::uint32_t, 4> block(std::uint64_t block) const {
    std::array<std::uint32_t, 4> c{static_cast<std::uint32_t>(block),
                                   static_cast<std::uint32_t>(block >> 32),
                                   static_cast<std::uint32_t>(stream_),
                                   static_cast<std::uint32_t>(stream_ >> 32)};
    std::array<std::uint32_t, 2> k = key_;
    for (int round = 0; round < 10; ++round) {
      const std::uint64_t p0 = std::uint64_t{0xD2511F53u} * c[0];
      const std::uint64_t p1 = std::uint64_t{0xCD9E8D57u} * c[2];
      c = {static_cast<std::uint32_t>(p1 >> 32) ^ c[1] ^ k[0], static_cast<std::uint32_t>(p1),
           static_cast<std::uint32_t>(p0 >> 32) ^ c[3] ^ k[1], static_cast<std::uint32_t>(p0)};
      k[0] += 0x9E3779B9u;
      k[1] += 0xBB67AE85u;
    }
    return c;
  }

  /// Standard normals n = 2 * block and 2 * block + 1 (Box-Muller on two 53-bit uniforms).
  std::array<double, 2> normal_pair(std::uint64_t block_index) const {
    const auto c = block(block_index);
    const std::uint64_t a = (std::uint64_t{c[0]} << 32) | c[1];
    const std::uint64_t b = (std::uint64_t{c[2]} << 32) | c[3];
    constexpr double kTwoPow53Inv = 1.0 / 9007199254740992.0;
    const double u1 = static_cast<double>((a >> 11) + 1) * kTwoPow53Inv;  // (0, 1]: log finite
    const double u2 = static_cast<double>(b >> 11) * kTwoPow53Inv;        // [0, 1)
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double phi = 6.283185307179586 * u2;
    return {r * std::cos(phi), r * std::sin(phi)};
  }

  /// Normal number q of this stream.
  double normals_at(std::uint64_t q) const { return normal_pair(q >> 1)[q & 1]; }

  /// Writes normals [first, first + n) of this stream into out (one Box-Muller per pair).
  void normals(std::uint64_t first, std::uint64_t n, double* out) const {
    std::uint64_t j = first;
    const std::uint64_t end = first + n;
    if (j < end && (j & 1)) *out++ = normal_pair(j++ >> 1)[1];
    for (; j + 1 < end; j += 2) {
      const auto z = normal_pair(j >> 1);
      *out++ = z[0];
      *out++ = z[1];
    }
    if (j < end) *out = normal_pair(j >> 1)[0];
  }

 private:
  std::array<std::uint32_t, 2> key_;
  std::uint64_t stream_;
};

}  // namespace ntkflow
