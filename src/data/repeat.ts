/** repeat_time: how many records, and which, one epoch takes from a dataset. */

/**
 * Records one epoch takes from a dataset of `total` records. Integer repeat_time k > 1:
 * k·total. A fraction r < 1: the first floor(total·r) records, computed in the same double
 * arithmetic as the official `int(len(data) * repeat_time)` so counts match exactly.
 */
export function selectedRecordCount(total: number, repeatTime: number): number {
  if (!(repeatTime > 0)) throw new RangeError(`repeat_time must be > 0, got ${repeatTime}`);
  if (repeatTime < 1) return Math.floor(total * repeatTime);
  if (!Number.isInteger(repeatTime))
    throw new RangeError(`repeat_time above 1 must be an integer, got ${repeatTime}`);
  return total * repeatTime;
}

/**
 * The record index (0-based line among valid records) behind position `i` of a dataset's
 * epoch list of `selectedRecordCount(total, repeatTime)` entries. Repeats follow the
 * official list repetition (`data * k`): the whole dataset, then the whole dataset again.
 */
export function selectedRecordIndex(i: number, total: number, repeatTime: number): number {
  const n = selectedRecordCount(total, repeatTime);
  if (!Number.isInteger(i) || i < 0 || i >= n)
    throw new RangeError(`index ${i} outside 0..${n - 1}`);
  return repeatTime < 1 ? i : i % total;
}
