/** Seeded random strings for tokenizer parity: Chinese, emoji, whitespace runs, digits, accents. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const POOL = [
  "hello",
  "world",
  "The",
  "quick",
  "brown",
  "fox",
  "don't",
  "it's",
  "WE'LL",
  "naïve",
  "café",
  "Straße",
  "ﬁne",
  "数据",
  "训练",
  "模型",
  "你好",
  "世界",
  "图片里有什么？",
  "。",
  "，",
  "上海人工智能实验室",
  "😀",
  "🚀",
  "👍🏽",
  "👨‍👩‍👧",
  "🇨🇳",
  "❤️",
  " ",
  "  ",
  "   ",
  "\t",
  "\n",
  "\n\n",
  " \n",
  "\r\n",
  "\u00a0",
  "\u3000",
  "0",
  "7",
  "42",
  "2024",
  "3.14159",
  "1,000,000",
  "-12",
  "１２３",
  "ＡＢＣ",
  "①",
  "x²",
  "(a+b)",
  "[[12, 34, 56, 78]]",
  "<ref>",
  "</ref>",
  "<box>",
  "</box>",
  "```",
  "#",
  "$x$",
  "@user",
  "...",
];

export function randomStrings(n: number, seed = 1, withSpecial = true): string[] {
  const r = rng(seed);
  const pool = withSpecial ? POOL : POOL.filter((p) => !p.startsWith("<"));
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const len = 1 + Math.floor(r() * 14);
    let s = "";
    for (let k = 0; k < len; k++) s += pool[Math.floor(r() * pool.length)];
    out.push(s);
  }
  return out;
}
