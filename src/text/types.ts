/** The training sample: what one record becomes for the model. Lengths come only from here. */

/** How one image (or one video frame) is cut into tiles. */
export interface ImagePlan {
  /** Absolute path of the image file (or of the video, with `frame` set). */
  path: string;
  /** Original [width, height], from image_wh. */
  wh: [number, number];
  /** Tile grid: `cols` × `rows` tiles of tile size, plus a thumbnail tile when `thumbnail`. */
  cols: number;
  rows: number;
  thumbnail: boolean;
  /** cols·rows (+1 with the thumbnail). */
  tiles: number;
  /** For a video frame: its index among the planned frames. */
  frame?: number;
}

export interface Sample {
  /** Token ids after the chat template, image context tokens expanded. */
  inputIds: Int32Array;
  /** Same length as inputIds; -100 where not learned. */
  labels: Int32Array;
  /** Images in order of appearance in the text. */
  images: ImagePlan[];
  /** Index into inputIds of each image's first `<IMG_CONTEXT>` token (same order as images). */
  contextStarts: Int32Array;
  /** inputIds.length */
  length: number;
  /** Number of labels that are not -100. */
  learned: number;
  /** True when the record has images or a video. */
  multimodal: boolean;
  /** Set when the record was cut to max_length (whole turns dropped). */
  truncated?: { droppedTurns: number; originalLength: number; cut?: boolean };
  /**
   * Text units where one token spans the end of the assistant prefix and the start of the
   * answer (that token is learned); the official label offsets break on such samples.
   */
  boundaryTokens?: number;
}

export const IGNORE_INDEX = -100;

/**
 * Frames taken from a video when nothing else says. The official training draws 8 to 32 per
 * visit, which makes lengths unknowable in advance; tessera fixes the count so the planner's
 * lengths are the model's.
 */
export const DEFAULT_VIDEO_FRAMES = 8;

/** Bits of SampleColumns.flags. */
export const FLAG_MULTIMODAL = 1;
export const FLAG_TRUNCATED = 2;

/**
 * Many samples in flat columns, in the cache's stored form (what prepare writes): sample i's
 * ids are the next stored[i] values of inputIds — its tokens with each image's run of
 * `<IMG_CONTEXT>` ids left out (imgTiles × tokens per tile of them follow the `<img>` at
 * imgContext − 1) — and its images the next imgCount[i] rows of the img columns.
 */
export interface SampleColumns {
  /** Samples made (records dropped by the truncation policy are not among them). */
  count: number;
  /** Per sample: index of its record in the input. */
  source: Int32Array;
  length: Int32Array;
  learned: Int32Array;
  /** FLAG_MULTIMODAL | FLAG_TRUNCATED */
  flags: Uint8Array;
  imgCount: Int32Array;
  /** Per sample: values in inputIds and labels (length less its context tokens). */
  stored: Int32Array;
  inputIds: Int32Array;
  labels: Int32Array;
  imgW: Int32Array;
  imgH: Int32Array;
  imgCols: Int32Array;
  imgRows: Int32Array;
  imgTiles: Int32Array;
  imgThumb: Uint8Array;
  /** Video frame index, -1 for an image. */
  imgFrame: Int32Array;
  /** Index in the sample's ids of the image's first context token. */
  imgContext: Int32Array;
  imgPaths: string[];
  /** The id of the context runs left out (−1 when the tokenizer has none). */
  imgContextId: number;
  /** Records that became no sample (over max_length under the truncation policy). */
  dropped: number;
  /** Samples cut to max_length. */
  truncated: number;
  /** Sum of Sample.boundaryTokens. */
  boundaryTokens: number;
}
