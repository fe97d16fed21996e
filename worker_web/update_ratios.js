// What the skip router learns from a tab's one-row steps: how much each layer changed the
// hidden state (|update| / |input|) and each attention head's share of it. Pure arithmetic
// over Float32Arrays; mirrors the fake worker's figures (shards/layer_stack.py).

/** |after - before| / |before|, |after| and |before| over one row. */
export function updateRatio(before, after) {
  let change = 0;
  let base = 0;
  let size = 0;
  for (let i = 0; i < before.length; i += 1) {
    const difference = after[i] - before[i];
    change += difference * difference;
    base += before[i] * before[i];
    size += after[i] * after[i];
  }
  return { ratio: base > 0 ? Math.sqrt(change / base) : 0, norm: Math.sqrt(size), inputNorm: Math.sqrt(base) };
}

/** Each head's contribution norm over the layer's input norm, from the graph's squared norms (one row). */
export function headContributions(inputNorm, energies) {
  const scale = inputNorm > 0 ? 1 / inputNorm : 0;
  return Array.from(energies, (energy) => Math.sqrt(Math.max(energy, 0)) * scale);
}
