// Owns getting shard files into the tab: Cache Storage first (so a reload does not
// download again), else a streamed download with progress; every file's sha256 is
// checked against the assignment before use. Knows nothing of onnxruntime or frames.

const CACHE_NAME = 'tabswarm-shards-v1';

async function sha256Hex(bytes) {
  if (globalThis.crypto && crypto.subtle) {
    const digest = await crypto.subtle.digest('SHA-256', bytes);
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
  }
  return sha256Fallback(bytes); // plain-http pages on other devices have no crypto.subtle
}

async function openCache() {
  try {
    return globalThis.caches ? await caches.open(CACHE_NAME) : null;
  } catch (error) {
    return null; // Cache Storage is unavailable outside secure contexts
  }
}

async function download(url, size, onBytes) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const bytes = new Uint8Array(size);
  const reader = response.body.getReader();
  let offset = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (offset + value.length > size) throw new Error(`${url}: more bytes than the manifest's ${size}`);
    bytes.set(value, offset);
    offset += value.length;
    onBytes(value.length);
  }
  if (offset !== size) throw new Error(`${url}: got ${offset} bytes, expected ${size}`);
  return bytes;
}

/**
 * Fetch every file of an assignment; returns {files: Map(name -> Uint8Array), cached (all
 * from the browser cache), downloaded (bytes fetched from the network)}.
 * onProgress(doneBytes, totalBytes, what) is called as bytes arrive.
 */
export async function fetchShardFiles(files, onProgress) {
  const cache = await openCache();
  const total = files.reduce((sum, file) => sum + file.size, 0);
  let done = 0;
  let fromCache = 0;
  let downloaded = 0;
  const out = new Map();
  for (const file of files) {
    const key = `${file.url}?sha256=${file.sha256}`;
    let bytes = null;
    const cached = cache ? await cache.match(key) : undefined;
    if (cached) {
      bytes = new Uint8Array(await cached.arrayBuffer());
      if (bytes.length !== file.size || (await sha256Hex(bytes)) !== file.sha256) {
        await cache.delete(key);
        bytes = null;
      } else {
        fromCache += 1;
      }
    }
    if (!bytes) {
      bytes = await download(file.url, file.size, (count) => { done += count; onProgress(done, total, file.name); });
      done -= file.size;
      downloaded += bytes.length;
      const digest = await sha256Hex(bytes);
      if (digest !== file.sha256) throw new Error(`${file.name}: sha256 mismatch (got ${digest.slice(0, 12)}…)`);
      if (cache) {
        try {
          await cache.put(key, new Response(bytes, { headers: { 'Content-Type': 'application/octet-stream' } }));
        } catch (error) {
          // Quota exceeded: still usable this time, just not cached.
        }
      }
    }
    done += file.size;
    onProgress(done, total, file.name);
    out.set(file.name, bytes);
  }
  return { files: out, cached: fromCache === files.length, downloaded };
}

// ---- SHA-256 for insecure contexts (FIPS 180-4) ---------------------------------------
const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);

export function sha256Fallback(bytes) {
  const h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  const length = bytes.length;
  const padded = new Uint8Array(((length + 9 + 63) >> 6) << 6);
  padded.set(bytes);
  padded[length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(length / 0x20000000), false);
  view.setUint32(padded.length - 4, (length << 3) >>> 0, false);
  const w = new Uint32Array(64);
  const rotate = (x, n) => (x >>> n) | (x << (32 - n));
  for (let offset = 0; offset < padded.length; offset += 64) {
    for (let i = 0; i < 16; i += 1) w[i] = view.getUint32(offset + i * 4, false);
    for (let i = 16; i < 64; i += 1) {
      const s0 = rotate(w[i - 15], 7) ^ rotate(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotate(w[i - 2], 17) ^ rotate(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) >>> 0;
    }
    let [a, b, c, d, e, f, g, hh] = h;
    for (let i = 0; i < 64; i += 1) {
      const t1 = (hh + (rotate(e, 6) ^ rotate(e, 11) ^ rotate(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) >>> 0;
      const t2 = ((rotate(a, 2) ^ rotate(a, 13) ^ rotate(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) >>> 0;
      hh = g; g = f; f = e; e = (d + t1) >>> 0; d = c; c = b; b = a; a = (t1 + t2) >>> 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  return Array.from(h, (x) => x.toString(16).padStart(8, '0')).join('');
}
