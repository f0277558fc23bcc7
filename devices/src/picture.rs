//! Camera pictures to the call's I420: packed YUYV (4:2:2) and RGB or grey
//! (what an MJPEG picture decodes to), cropped to the call's aspect ratio
//! around the centre and scaled to its size by nearest neighbour. Every
//! length is checked before a byte is read: a driver that reports one size
//! and delivers another gets an error, not a panic.

use bastet_call::I420Frame;

use crate::{Error, Result};

/// The part of a `src_w` × `src_h` picture with the aspect ratio of
/// `dst_w` × `dst_h`, centred: (x, y, width, height).
pub fn centre_crop(
    src_w: usize,
    src_h: usize,
    dst_w: usize,
    dst_h: usize,
) -> (usize, usize, usize, usize) {
    // Compare src_w / src_h with dst_w / dst_h without division.
    if src_w * dst_h > dst_w * src_h {
        // Wider than wanted: cut the sides.
        let w = (src_h * dst_w / dst_h).max(1);
        ((src_w - w) / 2, 0, w, src_h)
    } else {
        let h = (src_w * dst_h / dst_w).max(1);
        (0, (src_h - h) / 2, src_w, h)
    }
}

/// Where output pixel `(x, y)` of a `dst_w` × `dst_h` picture comes from in
/// the source, given its crop.
struct Sampler {
    crop: (usize, usize, usize, usize),
    dst: (usize, usize),
}

impl Sampler {
    fn new(src: (usize, usize), dst: (usize, usize)) -> Self {
        Sampler {
            crop: centre_crop(src.0, src.1, dst.0, dst.1),
            dst,
        }
    }

    fn source(&self, x: usize, y: usize) -> (usize, usize) {
        let (x0, y0, w, h) = self.crop;
        (x0 + x * w / self.dst.0, y0 + y * h / self.dst.1)
    }
}

fn check_sizes(src_w: usize, src_h: usize, dst_w: usize, dst_h: usize) -> Result<()> {
    if src_w == 0 || src_h == 0 {
        return Err(Error::Picture(format!("{src_w}x{src_h}: an empty picture")));
    }
    // Sides the I420 picture accepts are checked by I420Frame::new; a
    // zero here would divide by zero first.
    if dst_w == 0 || dst_h == 0 {
        return Err(Error::Picture(format!("{dst_w}x{dst_h}: an empty target")));
    }
    Ok(())
}

/// Builds the I420 picture from a function giving (Y, U, V) at a source
/// position.
fn build(
    sampler: &Sampler,
    (dst_w, dst_h): (usize, usize),
    yuv_at: impl Fn(usize, usize) -> (u8, u8, u8),
) -> Result<I420Frame> {
    let (cw, ch) = (dst_w / 2, dst_h / 2);
    let mut data = vec![0u8; dst_w * dst_h + 2 * cw * ch];
    let (luma, chroma) = data.split_at_mut(dst_w * dst_h);
    let (u_plane, v_plane) = chroma.split_at_mut(cw * ch);
    for y in 0..dst_h {
        for x in 0..dst_w {
            let (sx, sy) = sampler.source(x, y);
            let (l, u, v) = yuv_at(sx, sy);
            luma[y * dst_w + x] = l;
            if x % 2 == 0 && y % 2 == 0 && x / 2 < cw && y / 2 < ch {
                u_plane[(y / 2) * cw + x / 2] = u;
                v_plane[(y / 2) * cw + x / 2] = v;
            }
        }
    }
    I420Frame::new(dst_w, dst_h, data).map_err(|e| Error::Picture(e.to_string()))
}

/// A packed YUYV picture (`Y0 U Y1 V` per pixel pair; `stride` bytes a
/// row) to I420 of `dst_w` × `dst_h`.
pub fn yuyv_to_i420(
    data: &[u8],
    (src_w, src_h, stride): (usize, usize, usize),
    dst_w: usize,
    dst_h: usize,
) -> Result<I420Frame> {
    check_sizes(src_w, src_h, dst_w, dst_h)?;
    let row = src_w.div_ceil(2) * 4;
    if stride < row {
        return Err(Error::Picture(format!(
            "YUYV stride {stride} is shorter than a {src_w}-pixel row ({row} bytes)"
        )));
    }
    let needed = stride * (src_h - 1) + row;
    if data.len() < needed {
        return Err(Error::Picture(format!(
            "a {src_w}x{src_h} YUYV picture needs {needed} bytes, the camera gave {}",
            data.len()
        )));
    }
    let sampler = Sampler::new((src_w, src_h), (dst_w, dst_h));
    build(&sampler, (dst_w, dst_h), |sx, sy| {
        let pair = sy * stride + (sx / 2) * 4;
        (data[pair + (sx % 2) * 2], data[pair + 1], data[pair + 3])
    })
}

/// BT.601 limited range, the range I420 video is coded in.
fn rgb_to_yuv(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let (r, g, b) = (i32::from(r), i32::from(g), i32::from(b));
    let y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16;
    let u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128;
    let v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128;
    let clamp = |c: i32| c.clamp(0, 255) as u8;
    (clamp(y), clamp(u), clamp(v))
}

/// Pixels of 1 (grey) or 3 (RGB) bytes, rows packed, to I420 of
/// `dst_w` × `dst_h`.
pub fn rgb_to_i420(
    data: &[u8],
    (src_w, src_h, bytes_per_pixel): (usize, usize, usize),
    dst_w: usize,
    dst_h: usize,
) -> Result<I420Frame> {
    check_sizes(src_w, src_h, dst_w, dst_h)?;
    if bytes_per_pixel != 1 && bytes_per_pixel != 3 {
        return Err(Error::Picture(format!(
            "{bytes_per_pixel} bytes a pixel: only grey (1) and RGB (3) are read"
        )));
    }
    let needed = src_w * src_h * bytes_per_pixel;
    if data.len() < needed {
        return Err(Error::Picture(format!(
            "a {src_w}x{src_h} picture needs {needed} bytes, the decoder gave {}",
            data.len()
        )));
    }
    let sampler = Sampler::new((src_w, src_h), (dst_w, dst_h));
    build(&sampler, (dst_w, dst_h), |sx, sy| {
        let at = (sy * src_w + sx) * bytes_per_pixel;
        if bytes_per_pixel == 1 {
            rgb_to_yuv(data[at], data[at], data[at])
        } else {
            rgb_to_yuv(data[at], data[at + 1], data[at + 2])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_keep_the_aspect_around_the_centre() {
        assert_eq!(centre_crop(640, 480, 320, 240), (0, 0, 640, 480));
        assert_eq!(centre_crop(1280, 720, 320, 240), (160, 0, 960, 720));
        assert_eq!(centre_crop(480, 640, 320, 240), (0, 140, 480, 360));
    }

    /// A YUYV picture whose luma is its column and whose chroma is its row.
    fn yuyv(w: usize, h: usize, stride: usize) -> Vec<u8> {
        let mut data = vec![0u8; stride * h];
        for y in 0..h {
            for pair in 0..w / 2 {
                let at = y * stride + pair * 4;
                data[at] = (pair * 2) as u8;
                data[at + 1] = y as u8;
                data[at + 2] = (pair * 2 + 1) as u8;
                data[at + 3] = 200 - y as u8;
            }
        }
        data
    }

    #[test]
    fn yuyv_at_half_size_takes_every_other_pixel() {
        let (w, h, stride) = (16, 8, 40);
        let picture = yuyv_to_i420(&yuyv(w, h, stride), (w, h, stride), 8, 4).unwrap();
        for y in 0..4 {
            for x in 0..8 {
                assert_eq!(picture.y()[y * 8 + x], (x * 2) as u8, "luma at {x},{y}");
            }
        }
        let (u, v) = picture.uv();
        for cy in 0..2 {
            for cx in 0..4 {
                // Chroma comes from the source row of the block's top left.
                assert_eq!(u[cy * 4 + cx], (cy * 4) as u8);
                assert_eq!(v[cy * 4 + cx], 200 - (cy * 4) as u8);
            }
        }
    }

    #[test]
    fn a_short_or_narrow_yuyv_buffer_is_an_error_not_a_panic() {
        let data = yuyv(16, 8, 32);
        let short = yuyv_to_i420(&data[..data.len() - 1], (16, 8, 32), 8, 4);
        assert!(short.unwrap_err().to_string().contains("needs 256 bytes"));
        let narrow = yuyv_to_i420(&data, (16, 8, 16), 8, 4);
        assert!(narrow.unwrap_err().to_string().contains("stride 16"));
        assert!(yuyv_to_i420(&data, (0, 8, 32), 8, 4).is_err());
        assert!(yuyv_to_i420(&data, (16, 8, 32), 0, 4).is_err());
    }

    #[test]
    fn rgb_primaries_become_bt601_limited_range() {
        // White, black, and pure red, each filling a 2x2 picture.
        for (rgb, yuv) in [
            ([255, 255, 255], (235, 128, 128)),
            ([0, 0, 0], (16, 128, 128)),
            ([255, 0, 0], (82, 90, 240)),
        ] {
            let data: Vec<u8> = rgb.iter().copied().cycle().take(12).collect();
            let picture = rgb_to_i420(&data, (2, 2, 3), 2, 2).unwrap();
            assert!(picture.y().iter().all(|&l| l == yuv.0), "{rgb:?}");
            let (u, v) = picture.uv();
            assert_eq!((u[0], v[0]), (yuv.1, yuv.2), "{rgb:?}");
        }
        let grey = rgb_to_i420(&[255; 4], (2, 2, 1), 2, 2).unwrap();
        assert_eq!(grey.y()[0], 235);
        assert!(rgb_to_i420(&[0; 11], (2, 2, 3), 2, 2).is_err());
        assert!(rgb_to_i420(&[0; 16], (2, 2, 4), 2, 2).is_err());
    }

    #[test]
    fn a_wide_camera_is_cropped_then_scaled() {
        // 8x2 RGB, left and right quarters red, the middle green: the 4:3
        // crop of the middle keeps only green.
        let mut data = Vec::new();
        for _ in 0..2 {
            for x in 0..8 {
                data.extend(if (2..6).contains(&x) {
                    [0, 255, 0]
                } else {
                    [255, 0, 0]
                });
            }
        }
        let picture = rgb_to_i420(&data, (8, 2, 3), 4, 2).unwrap();
        let green = rgb_to_yuv(0, 255, 0).0;
        assert!(picture.y().iter().all(|&l| l == green), "{:?}", picture.y());
    }
}
