// FitFlow pass page: a QR code encoder written from the standard (ISO/IEC 18004), small enough to
// read in one sitting. It covers what a pass needs and a little more:
//   - one segment, alphanumeric mode (0-9, A-Z, space and $%*+-./:) or byte mode (UTF-8);
//   - versions 1 to 10 (21 x 21 to 57 x 57 modules), error correction level L or M;
//   - Reed-Solomon error correction over GF(256), the standard's block structure, interleaving;
//   - all eight data masks, the one with the lowest penalty (rules N1 to N4) chosen;
//   - format information, and version information for versions 7 and up.
// A pass code (122 characters, all alphanumeric) comes out as version 5 at level M, 37 x 37.
//
// encodeText(text, options) returns {version, level, mask, mode, size, rows}, where rows[y][x]
// is true for a dark module (no quiet zone: the renderer adds four light modules around it).
// It throws RangeError when the text does not fit version 10 at the chosen level.

// Error correction level: the two bits format information carries for it.
const LEVEL_BITS = { L: 1, M: 0 };

// Codewords (data and error correction together) a symbol of each version holds, 1 to 10.
const TOTAL_CODEWORDS = [0, 26, 44, 70, 100, 134, 172, 196, 242, 292, 346];

// Per level and version: [error correction codewords per block, number of blocks]. When the
// codewords do not split evenly, the last blocks hold one more data codeword than the first.
const BLOCKS = {
  L: [null, [7, 1], [10, 1], [15, 1], [20, 1], [26, 1], [18, 2], [20, 2], [24, 2], [30, 2], [18, 4]],
  M: [null, [10, 1], [16, 1], [26, 1], [18, 2], [24, 2], [16, 4], [18, 4], [22, 4], [22, 5], [26, 5]],
};

// Row/column coordinates of the alignment patterns' centres, per version.
const ALIGNMENT = [
  null,
  [],
  [6, 18],
  [6, 22],
  [6, 26],
  [6, 30],
  [6, 34],
  [6, 22, 38],
  [6, 24, 42],
  [6, 26, 46],
  [6, 28, 50],
];

const MAX_VERSION = 10;
const ALPHANUMERIC = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";
const MODE_BITS = { alphanumeric: 0b0010, byte: 0b0100 };
const PAD_BYTES = [0xec, 0x11];
const FORMAT_GENERATOR = 0x537; // x^10 + x^8 + x^5 + x^4 + x^2 + x + 1
const FORMAT_XOR = 0x5412;
const VERSION_GENERATOR = 0x1f25; // x^12 + x^11 + x^10 + x^9 + x^8 + x^5 + x^2 + 1

// --- Galois field GF(256), primitive polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d) ---

const EXP = new Uint8Array(512);
const LOG = new Uint8Array(256);
(function buildField() {
  let value = 1;
  for (let power = 0; power < 255; power += 1) {
    EXP[power] = value;
    LOG[value] = power;
    value <<= 1;
    if (value & 0x100) {
      value ^= 0x11d;
    }
  }
  // Doubled, so a product's exponent (at most 254 + 254) needs no modulo.
  for (let power = 255; power < 512; power += 1) {
    EXP[power] = EXP[power - 255];
  }
})();

function multiply(a, b) {
  return a === 0 || b === 0 ? 0 : EXP[LOG[a] + LOG[b]];
}

// The generator polynomial (x - a^0)(x - a^1)...(x - a^(n-1)), coefficients from x^n down.
function generatorPolynomial(degree) {
  let poly = [1];
  for (let i = 0; i < degree; i += 1) {
    const next = new Array(poly.length + 1).fill(0);
    for (let j = 0; j < poly.length; j += 1) {
      next[j] ^= poly[j]; // times x
      next[j + 1] ^= multiply(poly[j], EXP[i]); // times a^i (minus is plus in GF(2^8))
    }
    poly = next;
  }
  return poly;
}

// The error correction codewords of one block: the remainder of data(x) * x^n divided by the
// generator polynomial, computed like a shift register fed one data codeword at a time.
function errorCorrection(data, degree) {
  const generator = generatorPolynomial(degree);
  const register = new Array(degree).fill(0);
  for (const codeword of data) {
    const factor = codeword ^ register[0];
    register.shift();
    register.push(0);
    for (let j = 0; j < degree; j += 1) {
      register[j] ^= multiply(generator[j + 1], factor);
    }
  }
  return register;
}

// --- Data encoding ---

class BitWriter {
  constructor() {
    this.bits = [];
  }

  put(value, count) {
    for (let i = count - 1; i >= 0; i -= 1) {
      this.bits.push((value >>> i) & 1);
    }
  }
}

function utf8(text) {
  return Array.from(new TextEncoder().encode(text));
}

export function isAlphanumeric(text) {
  for (const char of text) {
    if (!ALPHANUMERIC.includes(char)) {
      return false;
    }
  }
  return true;
}

function countBits(mode, version) {
  if (mode === "alphanumeric") {
    return version <= 9 ? 9 : 11;
  }
  return version <= 9 ? 8 : 16;
}

// The segment's length in bits at this version (mode indicator, character count, data).
function segmentBits(mode, length, version) {
  const data = mode === "alphanumeric" ? 11 * Math.floor(length / 2) + 6 * (length % 2) : 8 * length;
  return 4 + countBits(mode, version) + data;
}

function dataCodewordCount(version, level) {
  const [ecPerBlock, blocks] = BLOCKS[level][version];
  return TOTAL_CODEWORDS[version] - ecPerBlock * blocks;
}

function writeSegment(writer, mode, text, bytes, version) {
  writer.put(MODE_BITS[mode], 4);
  if (mode === "alphanumeric") {
    writer.put(text.length, countBits(mode, version));
    for (let i = 0; i + 1 < text.length; i += 2) {
      writer.put(ALPHANUMERIC.indexOf(text[i]) * 45 + ALPHANUMERIC.indexOf(text[i + 1]), 11);
    }
    if (text.length % 2 === 1) {
      writer.put(ALPHANUMERIC.indexOf(text[text.length - 1]), 6);
    }
  } else {
    writer.put(bytes.length, countBits(mode, version));
    for (const byte of bytes) {
      writer.put(byte, 8);
    }
  }
}

// The data codewords: the segment, a terminator of up to four zero bits, zero bits to the next
// byte, then the pad bytes 0xEC and 0x11 in turn until the symbol's data capacity is full.
function dataCodewords(mode, text, bytes, version, level) {
  const capacityBits = dataCodewordCount(version, level) * 8;
  const writer = new BitWriter();
  writeSegment(writer, mode, text, bytes, version);
  writer.put(0, Math.min(4, capacityBits - writer.bits.length));
  writer.put(0, (8 - (writer.bits.length % 8)) % 8);
  const codewords = [];
  for (let i = 0; i < writer.bits.length; i += 8) {
    let byte = 0;
    for (let j = 0; j < 8; j += 1) {
      byte = (byte << 1) | writer.bits[i + j];
    }
    codewords.push(byte);
  }
  for (let i = 0; codewords.length < capacityBits / 8; i += 1) {
    codewords.push(PAD_BYTES[i % 2]);
  }
  return codewords;
}

// Splits the data into the version's blocks, adds each block's error correction, and
// interleaves: the first codeword of every block, then the second, ...; the same for the error
// correction codewords after all the data.
function finalCodewords(data, version, level) {
  const [ecPerBlock, blockCount] = BLOCKS[level][version];
  const total = TOTAL_CODEWORDS[version];
  const shortBlocks = blockCount - (total % blockCount);
  const shortData = Math.floor(total / blockCount) - ecPerBlock;
  const blocks = [];
  let offset = 0;
  for (let b = 0; b < blockCount; b += 1) {
    const length = shortData + (b < shortBlocks ? 0 : 1);
    const block = data.slice(offset, offset + length);
    offset += length;
    blocks.push({ data: block, ec: errorCorrection(block, ecPerBlock) });
  }
  const result = [];
  for (let i = 0; i < shortData + 1; i += 1) {
    for (const block of blocks) {
      if (i < block.data.length) {
        result.push(block.data[i]);
      }
    }
  }
  for (let i = 0; i < ecPerBlock; i += 1) {
    for (const block of blocks) {
      result.push(block.ec[i]);
    }
  }
  return result;
}

// --- The symbol ---

class Symbol {
  constructor(version) {
    this.version = version;
    this.size = 17 + 4 * version;
    this.dark = [];
    this.reserved = []; // function patterns and format/version areas: never data, never masked
    for (let y = 0; y < this.size; y += 1) {
      this.dark.push(new Array(this.size).fill(false));
      this.reserved.push(new Array(this.size).fill(false));
    }
  }

  setFunction(x, y, dark) {
    this.dark[y][x] = dark;
    this.reserved[y][x] = true;
  }

  drawFunctionPatterns() {
    const size = this.size;
    // Finder patterns with their light separators, in three corners.
    for (const [left, top] of [
      [0, 0],
      [size - 7, 0],
      [0, size - 7],
    ]) {
      for (let dy = -1; dy <= 7; dy += 1) {
        for (let dx = -1; dx <= 7; dx += 1) {
          const x = left + dx;
          const y = top + dy;
          if (x < 0 || y < 0 || x >= size || y >= size) {
            continue;
          }
          const inside = dx >= 0 && dx <= 6 && dy >= 0 && dy <= 6;
          const ring = dx === 0 || dx === 6 || dy === 0 || dy === 6;
          const core = dx >= 2 && dx <= 4 && dy >= 2 && dy <= 4;
          this.setFunction(x, y, inside && (ring || core));
        }
      }
    }
    // Timing patterns: row 6 and column 6, dark on even coordinates.
    for (let i = 8; i < size - 8; i += 1) {
      this.setFunction(i, 6, i % 2 === 0);
      this.setFunction(6, i, i % 2 === 0);
    }
    // Alignment patterns: 5 x 5, at every pair of listed centres except under a finder.
    const centres = ALIGNMENT[this.version];
    const last = centres.length - 1;
    centres.forEach((cy, i) => {
      centres.forEach((cx, j) => {
        const underFinder = (i === 0 && j === 0) || (i === 0 && j === last) || (i === last && j === 0);
        if (underFinder) {
          return;
        }
        for (let dy = -2; dy <= 2; dy += 1) {
          for (let dx = -2; dx <= 2; dx += 1) {
            this.setFunction(cx + dx, cy + dy, Math.max(Math.abs(dx), Math.abs(dy)) !== 1);
          }
        }
      });
    });
    // Format areas (filled in once the mask is known) and the module that is always dark.
    this.drawFormat(0);
    this.setFunction(8, size - 8, true);
    if (this.version >= 7) {
      this.drawVersion();
    }
  }

  // Format information: 2 bits of level and 3 of mask, 10 bits of BCH(15,5) error correction,
  // XORed with 0x5412; one copy around the top-left finder, one split between the other two.
  drawFormat(bits) {
    const size = this.size;
    const bit = (i) => ((bits >>> i) & 1) === 1;
    for (let i = 0; i <= 5; i += 1) {
      this.setFunction(8, i, bit(i));
    }
    this.setFunction(8, 7, bit(6));
    this.setFunction(8, 8, bit(7));
    this.setFunction(7, 8, bit(8));
    for (let i = 9; i <= 14; i += 1) {
      this.setFunction(14 - i, 8, bit(i));
    }
    for (let i = 0; i <= 7; i += 1) {
      this.setFunction(size - 1 - i, 8, bit(i));
    }
    for (let i = 8; i <= 14; i += 1) {
      this.setFunction(8, size - 15 + i, bit(i));
    }
  }

  // Version information (versions 7 and up): 6 bits of version, 12 bits of BCH(18,6) error
  // correction; a 6 x 3 block left of the top-right finder and its mirror above the bottom-left.
  drawVersion() {
    const bits = (this.version << 12) | polynomialRemainder(this.version << 12, 17, VERSION_GENERATOR, 12);
    for (let i = 0; i < 18; i += 1) {
      const dark = ((bits >>> i) & 1) === 1;
      const near = Math.floor(i / 3);
      const far = this.size - 11 + (i % 3);
      this.setFunction(far, near, dark);
      this.setFunction(near, far, dark);
    }
  }

  // Places the codewords' bits, most significant first, in two-module-wide columns from the
  // bottom-right corner, going up then down in turn, skipping reserved modules and the vertical
  // timing column. Modules left over after the last codeword (the remainder bits) stay light.
  placeData(codewords) {
    const size = this.size;
    const totalBits = codewords.length * 8;
    let index = 0;
    let upward = true;
    for (let right = size - 1; right >= 1; right -= 2) {
      if (right === 6) {
        right = 5;
      }
      for (let step = 0; step < size; step += 1) {
        const y = upward ? size - 1 - step : step;
        for (const x of [right, right - 1]) {
          if (this.reserved[y][x]) {
            continue;
          }
          if (index < totalBits) {
            this.dark[y][x] = ((codewords[index >>> 3] >>> (7 - (index & 7))) & 1) === 1;
          }
          index += 1;
        }
      }
      upward = !upward;
    }
  }

  // Masking is its own inverse: applying the same mask twice restores the data.
  applyMask(mask) {
    for (let y = 0; y < this.size; y += 1) {
      for (let x = 0; x < this.size; x += 1) {
        if (!this.reserved[y][x] && MASKS[mask](y, x)) {
          this.dark[y][x] = !this.dark[y][x];
        }
      }
    }
  }
}

// The eight data mask conditions, i the row and j the column: where true, the module is flipped.
const MASKS = [
  (i, j) => (i + j) % 2 === 0,
  (i) => i % 2 === 0,
  (i, j) => j % 3 === 0,
  (i, j) => (i + j) % 3 === 0,
  (i, j) => (Math.floor(i / 2) + Math.floor(j / 3)) % 2 === 0,
  (i, j) => ((i * j) % 2) + ((i * j) % 3) === 0,
  (i, j) => (((i * j) % 2) + ((i * j) % 3)) % 2 === 0,
  (i, j) => (((i + j) % 2) + ((i * j) % 3)) % 2 === 0,
];

// The remainder of value (a polynomial over GF(2) of degree at most topBit) divided by the
// generator of the given degree.
function polynomialRemainder(value, topBit, generator, degree) {
  let rest = value;
  for (let bit = topBit; bit >= degree; bit -= 1) {
    if ((rest >>> bit) & 1) {
      rest ^= generator << (bit - degree);
    }
  }
  return rest;
}

function formatBits(level, mask) {
  const data = (LEVEL_BITS[level] << 3) | mask;
  return ((data << 10) | polynomialRemainder(data << 10, 14, FORMAT_GENERATOR, 10)) ^ FORMAT_XOR;
}

// --- Mask evaluation (the standard's penalty rules) ---

// The lines of the symbol: every row, then every column, as arrays of booleans.
function lines(dark) {
  const size = dark.length;
  const result = dark.map((row) => row.slice());
  for (let x = 0; x < size; x += 1) {
    result.push(dark.map((row) => row[x]));
  }
  return result;
}

// N1: each run of five or more same-coloured modules in a line costs 3, plus 1 per module over 5.
function runPenalty(line) {
  let penalty = 0;
  let run = 1;
  for (let i = 1; i <= line.length; i += 1) {
    if (i < line.length && line[i] === line[i - 1]) {
      run += 1;
      continue;
    }
    if (run >= 5) {
      penalty += 3 + (run - 5);
    }
    run = 1;
  }
  return penalty;
}

// N3: each dark-light-dark-dark-dark-light-dark (1:1:3:1:1) pattern with four light modules
// before or after it costs 40. Outside the symbol is the light quiet zone.
const FINDER_LIKE = [true, false, true, true, true, false, true];
function finderPenalty(line) {
  const at = (i) => i >= 0 && i < line.length && line[i];
  let count = 0;
  for (let start = 0; start + 7 <= line.length; start += 1) {
    if (!FINDER_LIKE.every((dark, k) => line[start + k] === dark)) {
      continue;
    }
    const lightBefore = [1, 2, 3, 4].every((k) => !at(start - k));
    const lightAfter = [7, 8, 9, 10].every((k) => !at(start + k));
    if (lightBefore || lightAfter) {
      count += 1;
    }
  }
  return 40 * count;
}

function penalty(dark) {
  const size = dark.length;
  let total = 0;
  for (const line of lines(dark)) {
    total += runPenalty(line) + finderPenalty(line);
  }
  // N2: each 2 x 2 block of one colour costs 3 (overlapping blocks each count).
  for (let y = 0; y + 1 < size; y += 1) {
    for (let x = 0; x + 1 < size; x += 1) {
      const c = dark[y][x];
      if (dark[y][x + 1] === c && dark[y + 1][x] === c && dark[y + 1][x + 1] === c) {
        total += 3;
      }
    }
  }
  // N4: 10 for every full 5 % the share of dark modules is away from 50 %.
  let darkCount = 0;
  for (const row of dark) {
    for (const module of row) {
      darkCount += module ? 1 : 0;
    }
  }
  const cells = size * size;
  total += 10 * Math.floor(Math.abs(darkCount * 20 - cells * 10) / cells);
  return total;
}

// --- The whole encoder ---

/**
 * Encodes text as a QR code symbol.
 * options.level: "L" or "M" (default "M").
 * options.mode: "alphanumeric", "byte" or undefined (alphanumeric when every character allows).
 * options.minVersion: the smallest version to consider (default 1).
 * options.mask: 0 to 7 to force a mask; by default the one with the lowest penalty.
 * Returns {version, level, mask, mode, size, rows}; rows[y][x] is true for a dark module.
 * Throws RangeError if the text does not fit version 10, or TypeError for a bad option.
 */
export function encodeText(text, options = {}) {
  const level = options.level === undefined ? "M" : options.level;
  if (!(level in LEVEL_BITS)) {
    throw new TypeError("level must be L or M");
  }
  const mode = options.mode === undefined ? (isAlphanumeric(text) ? "alphanumeric" : "byte") : options.mode;
  if (!(mode in MODE_BITS)) {
    throw new TypeError("mode must be alphanumeric or byte");
  }
  if (mode === "alphanumeric" && !isAlphanumeric(text)) {
    throw new TypeError("the text has characters outside the alphanumeric set");
  }
  const bytes = mode === "byte" ? utf8(text) : null;
  const length = mode === "byte" ? bytes.length : text.length;
  const minVersion = options.minVersion === undefined ? 1 : options.minVersion;
  let version = 0;
  for (let v = Math.max(1, minVersion); v <= MAX_VERSION; v += 1) {
    const fitsCount = length < 2 ** countBits(mode, v);
    if (fitsCount && segmentBits(mode, length, v) <= dataCodewordCount(v, level) * 8) {
      version = v;
      break;
    }
  }
  if (version === 0) {
    throw new RangeError(`the text does not fit a version ${MAX_VERSION} symbol at level ${level}`);
  }
  const codewords = finalCodewords(dataCodewords(mode, text, bytes, version, level), version, level);
  const symbol = new Symbol(version);
  symbol.drawFunctionPatterns();
  symbol.placeData(codewords);

  let chosen = options.mask;
  if (chosen === undefined) {
    let best = Infinity;
    for (let mask = 0; mask < 8; mask += 1) {
      symbol.applyMask(mask);
      symbol.drawFormat(formatBits(level, mask));
      const score = penalty(symbol.dark);
      if (score < best) {
        best = score;
        chosen = mask;
      }
      symbol.applyMask(mask);
    }
  } else if (!Number.isInteger(chosen) || chosen < 0 || chosen > 7) {
    throw new TypeError("mask must be 0 to 7");
  }
  symbol.applyMask(chosen);
  symbol.drawFormat(formatBits(level, chosen));
  return { version, level, mask: chosen, mode, size: symbol.size, rows: symbol.dark };
}
