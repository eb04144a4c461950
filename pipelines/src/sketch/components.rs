//! Connected components of a mask, found run by run (8-connectivity).
//!
//! Working on horizontal runs instead of pixels keeps union-find small (tens of thousands of
//! runs for a page instead of millions of pixels) and gives each component its pixels as spans,
//! which is the form the shape tests want.

use super::geometry::Rect;
use super::mask::Mask;

/// No component: the label of paper pixels.
pub(crate) const NO_LABEL: u32 = u32::MAX;

/// A horizontal span `x0..x1` of ink on row `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub y: u32,
    pub x0: u32,
    pub x1: u32,
}

/// One connected component of the (dilated) mask.
#[derive(Debug, Clone)]
pub(crate) struct Component {
    /// Its runs in the labelled mask, top to bottom, left to right.
    pub runs: Vec<Run>,
    /// Extent of the original (undilated) ink inside it.
    pub ink_rect: Rect,
    /// Number of original ink pixels inside it.
    pub ink_pixels: u32,
}

/// Components and a per-pixel label image.
#[derive(Debug)]
pub(crate) struct Labels {
    /// Components in scan order of their first pixel, so numbering is deterministic.
    pub components: Vec<Component>,
    /// Per pixel of the labelled mask: the index of its component, or [`NO_LABEL`].
    pub label: Vec<u32>,
    /// Row length of `label`.
    pub width: u32,
}

impl Labels {
    /// The component at `(x, y)`, if any.
    pub fn at(&self, x: i64, y: i64) -> Option<u32> {
        let height = self.label.len() as i64 / i64::from(self.width.max(1));
        if x < 0 || y < 0 || x >= i64::from(self.width) || y >= height {
            return None;
        }
        let l = self.label[y as usize * self.width as usize + x as usize];
        (l != NO_LABEL).then_some(l)
    }
}

/// Labels the components of `mask`; `ink` (same size, a subset of `mask`) gives each
/// component's original ink extent and pixel count.
pub(crate) fn label(mask: &Mask, ink: &Mask) -> Labels {
    let (runs, row_start) = extract_runs(mask);
    let mut forest = UnionFind::new(runs.len());
    for y in 1..mask.height as usize {
        connect_rows(
            &runs,
            row_start[y - 1]..row_start[y],
            row_start[y]..row_start[y + 1],
            &mut forest,
        );
    }

    let mut id_of_root = vec![NO_LABEL; runs.len()];
    let mut components: Vec<Component> = Vec::new();
    let mut label = vec![NO_LABEL; mask.bits.len()];
    let w = mask.width as usize;
    for (i, run) in runs.iter().enumerate() {
        let root = forest.find(i);
        if id_of_root[root] == NO_LABEL {
            id_of_root[root] = components.len() as u32;
            components.push(Component {
                runs: Vec::new(),
                ink_rect: Rect::default(),
                ink_pixels: 0,
            });
        }
        let id = id_of_root[root];
        let start = run.y as usize * w;
        label[start + run.x0 as usize..start + run.x1 as usize].fill(id);
        let c = &mut components[id as usize];
        add_ink(c, run, &ink.row(run.y)[run.x0 as usize..run.x1 as usize]);
        c.runs.push(*run);
    }
    for c in &mut components {
        c.ink_rect = without_specks(c, ink);
    }
    Labels {
        components,
        label,
        width: mask.width,
    }
}

/// Grows the component's ink extent and count by the ink within `run` (`span` is that part of
/// the ink row).
fn add_ink(c: &mut Component, run: &Run, span: &[u8]) {
    let first = span.iter().position(|&b| b != 0);
    let Some(first) = first else { return };
    let last = span.iter().rposition(|&b| b != 0).unwrap_or(first);
    let count = span.iter().filter(|&&b| b != 0).count() as u32;
    let (x0, x1) = (run.x0 + first as u32, run.x0 + last as u32 + 1);
    let rect = Rect::from_edges(x0, run.y, x1, run.y + 1);
    c.ink_rect = if c.ink_pixels == 0 {
        rect
    } else {
        c.ink_rect.union(&rect)
    };
    c.ink_pixels += count;
}

/// The component's ink extent without specks that the dilation merged into it: at each side, a
/// little ink separated from the rest by an empty row or column is dust, not stroke.
fn without_specks(c: &Component, ink: &Mask) -> Rect {
    let r = c.ink_rect;
    let mut rows = vec![0u32; r.h as usize];
    let mut cols = vec![0u32; r.w as usize];
    for run in &c.runs {
        let (x0, x1) = (run.x0.max(r.x), run.x1.min(r.right()));
        if run.y < r.y || run.y >= r.bottom() || x0 >= x1 {
            continue;
        }
        let span = &ink.row(run.y)[x0 as usize..x1 as usize];
        for (i, &b) in span.iter().enumerate() {
            let b = u32::from(b);
            rows[(run.y - r.y) as usize] += b;
            cols[(x0 - r.x) as usize + i] += b;
        }
    }
    // A 3×3 speck is 9 pixels; keep the limit small next to small strokes.
    let limit = (c.ink_pixels / 20).min(16);
    let (top, bottom) = trimmed_span(&rows, limit);
    let (left, right) = trimmed_span(&cols, limit);
    Rect::from_edges(
        r.x + left as u32,
        r.y + top as u32,
        r.x + right as u32,
        r.y + bottom as u32,
    )
}

/// The range of `counts` left after dropping, at each end, a stretch of at most `limit` that
/// an empty entry separates from the rest.
fn trimmed_span(counts: &[u32], limit: u32) -> (usize, usize) {
    let cut = |counts: &mut dyn Iterator<Item = u32>| {
        let (mut acc, mut keep_from, mut after_gap) = (0u32, 0usize, false);
        for (i, c) in counts.enumerate() {
            if c > 0 && after_gap {
                // Everything before this entry is at most `limit` and cut off by a gap.
                keep_from = i;
                after_gap = false;
            }
            acc += c;
            if acc > limit {
                break;
            }
            after_gap |= c == 0;
        }
        keep_from
    };
    let start = cut(&mut counts.iter().copied());
    let end = counts.len() - cut(&mut counts.iter().rev().copied());
    if start < end {
        (start, end)
    } else {
        (0, counts.len())
    }
}

/// All runs, row by row; `row_start[y]..row_start[y + 1]` are the runs of row `y`.
fn extract_runs(mask: &Mask) -> (Vec<Run>, Vec<usize>) {
    let mut runs = Vec::new();
    let mut row_start = Vec::with_capacity(mask.height as usize + 1);
    for y in 0..mask.height {
        row_start.push(runs.len());
        let row = mask.row(y);
        let mut x = 0;
        while x < row.len() {
            if row[x] == 0 {
                x += 1;
                continue;
            }
            let x0 = x;
            while x < row.len() && row[x] != 0 {
                x += 1;
            }
            runs.push(Run {
                y,
                x0: x0 as u32,
                x1: x as u32,
            });
        }
    }
    row_start.push(runs.len());
    (runs, row_start)
}

/// Unites runs of adjacent rows that touch, including diagonally (8-connectivity).
fn connect_rows(
    runs: &[Run],
    above: std::ops::Range<usize>,
    below: std::ops::Range<usize>,
    forest: &mut UnionFind,
) {
    let (mut i, mut j) = (above.start, below.start);
    while i < above.end && j < below.end {
        let (a, b) = (runs[i], runs[j]);
        if a.x0 <= b.x1 && b.x0 <= a.x1 {
            forest.union(i, j);
        }
        if a.x1 < b.x1 {
            i += 1;
        } else {
            j += 1;
        }
    }
}

/// Disjoint sets with path halving; the smaller index becomes the root, which keeps the result
/// independent of the order of unions.
#[derive(Debug)]
struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n).collect(),
        }
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            self.parent[hi] = lo;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_from(rows: &[&str]) -> Mask {
        let mut m = Mask::new(rows[0].len() as u32, rows.len() as u32);
        for (y, row) in rows.iter().enumerate() {
            for (x, c) in row.chars().enumerate() {
                m.bits[y * rows[0].len() + x] = u8::from(c == '#');
            }
        }
        m
    }

    #[test]
    fn components_are_found_in_scan_order_with_diagonal_links() {
        let m = mask_from(&[
            "##....#", //
            "..#...#", //
            "......#", //
            "###....", //
        ]);
        let labels = label(&m, &m);
        assert_eq!(labels.components.len(), 3);
        assert_eq!(
            labels.components[0].ink_rect,
            Rect {
                x: 0,
                y: 0,
                w: 3,
                h: 2
            }
        );
        assert_eq!(labels.components[0].ink_pixels, 3);
        assert_eq!(
            labels.components[1].ink_rect,
            Rect {
                x: 6,
                y: 0,
                w: 1,
                h: 3
            }
        );
        assert_eq!(
            labels.components[2].ink_rect,
            Rect {
                x: 0,
                y: 3,
                w: 3,
                h: 1
            }
        );
        assert_eq!(labels.at(2, 1), Some(0));
        assert_eq!(labels.at(3, 1), None);
    }

    #[test]
    fn a_speck_merged_by_dilation_does_not_stretch_the_extent() {
        let m = mask_from(&[
            "..#........", //
            "...........", //
            "###########", //
            "###########", //
        ]);
        let c = &label(&m.dilate(1), &m).components[0];
        assert_eq!(c.ink_pixels, 23);
        assert_eq!(
            c.ink_rect,
            Rect {
                x: 0,
                y: 2,
                w: 11,
                h: 2
            }
        );
    }

    #[test]
    fn trimming_keeps_everything_without_a_gap() {
        assert_eq!(trimmed_span(&[1, 5, 5, 1], 3), (0, 4));
        assert_eq!(trimmed_span(&[2, 0, 9, 9, 0, 1], 3), (2, 4));
        assert_eq!(trimmed_span(&[2, 0, 2], 3), (0, 3));
    }

    #[test]
    fn a_u_shape_is_one_component() {
        let m = mask_from(&[
            "#...#", //
            "#...#", //
            "#####", //
        ]);
        assert_eq!(label(&m, &m).components.len(), 1);
    }
}
