//! Binary masks (ink / no ink) and the morphology the detector needs.

/// A binary image: one byte per pixel, 1 for ink, 0 for paper. Bytes rather than bits because
/// every pass reads whole rows and byte access keeps those loops simple and fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mask {
    pub width: u32,
    pub height: u32,
    pub bits: Vec<u8>,
}

impl Mask {
    /// An all-paper mask.
    pub fn new(width: u32, height: u32) -> Self {
        Mask {
            width,
            height,
            bits: vec![0; width as usize * height as usize],
        }
    }

    /// Row `y` as a slice.
    pub fn row(&self, y: u32) -> &[u8] {
        let w = self.width as usize;
        let start = y as usize * w;
        &self.bits[start..start + w]
    }

    /// Whether `(x, y)` is ink.
    #[cfg(test)]
    pub fn get(&self, x: u32, y: u32) -> bool {
        self.bits[y as usize * self.width as usize + x as usize] != 0
    }

    /// Dilation by a (2r+1)×(2r+1) square: closes gaps of up to 2r pixels in strokes. Separable
    /// (rows, then columns) with running counts, so the cost does not depend on `r`.
    pub fn dilate(&self, r: u32) -> Mask {
        let horizontal = self.dilate_rows(r as usize);
        horizontal.dilate_columns(r as usize)
    }

    fn dilate_rows(&self, r: usize) -> Mask {
        let w = self.width as usize;
        let mut out = Mask::new(self.width, self.height);
        if w == 0 {
            return out;
        }
        for (src, dst) in self.bits.chunks_exact(w).zip(out.bits.chunks_exact_mut(w)) {
            // Number of ink pixels in the window [x - r, x + r], updated as the window slides.
            let mut count: usize = src[..r.min(w)].iter().map(|&b| usize::from(b)).sum();
            for x in 0..w {
                if x + r < w {
                    count += usize::from(src[x + r]);
                }
                if x > r {
                    count -= usize::from(src[x - r - 1]);
                }
                dst[x] = u8::from(count > 0);
            }
        }
        out
    }

    fn dilate_columns(&self, r: usize) -> Mask {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut out = Mask::new(self.width, self.height);
        // Per column, the number of ink pixels in rows [y - r, y + r].
        let mut counts = vec![0u16; w];
        for y in 0..r.min(h) {
            add_row(&mut counts, &self.bits[y * w..(y + 1) * w]);
        }
        for y in 0..h {
            if y + r < h {
                add_row(&mut counts, &self.bits[(y + r) * w..(y + r + 1) * w]);
            }
            if y > r {
                let gone = &self.bits[(y - r - 1) * w..(y - r) * w];
                for (c, &b) in counts.iter_mut().zip(gone) {
                    *c -= u16::from(b);
                }
            }
            for (d, &c) in out.bits[y * w..(y + 1) * w].iter_mut().zip(&counts) {
                *d = u8::from(c > 0);
            }
        }
        out
    }
}

fn add_row(counts: &mut [u16], row: &[u8]) {
    for (c, &b) in counts.iter_mut().zip(row) {
        *c += u16::from(b);
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
    fn dilation_grows_by_r_in_every_direction() {
        let m = mask_from(&[".....", ".....", "..#..", ".....", "....."]);
        let d = m.dilate(1);
        let expected = mask_from(&[".....", ".###.", ".###.", ".###.", "....."]);
        assert_eq!(d, expected);
        assert_eq!(m.dilate(2).bits.iter().filter(|&&b| b == 1).count(), 25);
    }

    #[test]
    fn dilation_bridges_a_gap_of_two_r() {
        let m = mask_from(&["##..##"]);
        assert!(m.dilate(1).bits.iter().all(|&b| b == 1));
        let wide = mask_from(&["##...##"]);
        assert_eq!(wide.dilate(1).bits[3], 0);
    }
}
