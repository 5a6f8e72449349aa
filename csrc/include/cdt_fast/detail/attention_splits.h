// How the CUDA linear attention splits each frame's positions for its context product: one
// definition for the launch and for the size of the scratch the caller allocates (one partial
// context per split, summed in split order afterwards, so the result never depends on scheduling).
#pragma once

#include <cstdint>

namespace cdt_fast {
namespace detail {

constexpr std::int64_t kAttentionTile = 32;  // the context kernel's tile of channels / positions

// Splits until there are a few blocks per SM (~1k in flight), 8 position tiles of work at least,
// within the grid's z limit.
inline std::int64_t attention_position_splits(std::int64_t frames, std::int64_t positions,
                                              std::int64_t heads, std::int64_t dim) {
  const std::int64_t pairs = frames * heads;
  if (pairs <= 0 || positions <= 0 || dim <= 0) return 1;
  const std::int64_t dim_tiles = (dim + kAttentionTile - 1) / kAttentionTile;
  const std::int64_t tiles = pairs * dim_tiles * dim_tiles;
  std::int64_t splits = (1024 + tiles - 1) / tiles;
  const std::int64_t max_splits = (positions + 8 * kAttentionTile - 1) / (8 * kAttentionTile);
  splits = splits < max_splits ? splits : max_splits;
  if (splits * pairs > 65535) splits = 65535 / pairs;
  return splits < 1 ? 1 : splits;
}

}  // namespace detail
}  // namespace cdt_fast
