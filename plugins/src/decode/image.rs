//! PNG and JPEG inputs, with the model's preprocessing.
//!
//! Steps, in order (the torchvision convention):
//! 1. the header is read and an image declaring more than `max_pixels` pixels is refused as
//!    `too_large` before any pixel is decoded (a decompression bomb costs a few header bytes);
//! 2. conversion to the model's channels (1 = luma, 3 = RGB) as `f32` in `[0, 1]`;
//! 3. `resize = [h, w]` (bilinear); with neither `resize` nor `crop` configured, the image is resized to
//!    the model's input size (the aspect ratio is not kept);
//! 4. `crop = [h, w]`: the centre `h × w` pixels;
//! 5. mean/std normalisation by [`super::normalize`], the function the engine's noise inputs go
//!    through, so images and noise are preprocessed identically;
//! 6. layout: `[C, H, W]` (NCHW) or `[H, W, C]` (NHWC); the result must be the model's input shape.

use std::io::Cursor;

use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, Pixel};
use ndarray::{Array3, ArrayD};

use super::{DecodeOptions, Layout, RejectReason, Rejection, normalize};

/// The model's image geometry, from its input shape and layout: `(channels, height, width)`.
pub fn model_geometry(input_shape: &[usize], layout: Layout) -> Option<(usize, usize, usize)> {
    match (input_shape, layout) {
        ([c, h, w], Layout::Nchw) => Some((*c, *h, *w)),
        ([h, w, c], Layout::Nhwc) => Some((*c, *h, *w)),
        _ => None,
    }
}

/// Whether the image preprocessing can produce the model's input: every problem, for `agent check`.
/// Only configured keys are checked (a model that never sees images needs none of them).
pub fn check_geometry(
    input_shape: &[usize],
    norm: &super::Normalization,
    img: &super::ImageOptions,
) -> Vec<String> {
    let mut out = Vec::new();
    let images = img.resize.is_some() || img.crop.is_some() || img.channels.is_some();
    let Some((c, h, w)) = model_geometry(input_shape, norm.layout) else {
        if images || !norm.layout.is_nchw() {
            out.push(format!(
                "the model input {input_shape:?} is not a rank-3 image in the configured layout"
            ));
        }
        return out;
    };
    if let Some(ch) = img.channels
        && ch as usize != c
    {
        out.push(format!("channels = {ch}, but the model takes {c} channels"));
    }
    let last = img.crop.or(img.resize);
    if let Some([lh, lw]) = last
        && (lh as usize, lw as usize) != (h, w)
    {
        let key = if img.crop.is_some() { "crop" } else { "resize" };
        out.push(format!("{key} = [{lh}, {lw}], but the model takes {h}×{w} images"));
    }
    for (key, v) in [("mean", &norm.mean), ("std", &norm.std)] {
        if v.len() > 1 && v.len() != c {
            out.push(format!("{key} has {} values for a model with {c} channels", v.len()));
        }
    }
    out
}

/// Decodes a PNG or JPEG into one preprocessed sample (without the batch axis).
pub(crate) fn read_image(name: &str, bytes: &[u8], opts: &DecodeOptions) -> Result<ArrayD<f32>, Rejection> {
    let layout = opts.normalization.layout;
    let geometry = model_geometry(&opts.input_shape, layout);
    if geometry.is_none() && !opts.input_shape.is_empty() {
        return Err(Rejection::new(
            RejectReason::Shape,
            name,
            format!(
                "an image needs a rank-3 model input ([C, H, W] or [H, W, C]); the model takes {:?}",
                opts.input_shape
            ),
        ));
    }
    let img = decode_capped(name, bytes, opts.image.max_pixels)?;
    let channels = match (opts.image.channels, geometry) {
        (Some(c), _) => c as usize,
        (None, Some((c, _, _))) => c,
        (None, None) => 1,
    };
    let (h, w, data) = match channels {
        1 => geometry_steps(name, img.to_luma32f(), opts, geometry)?,
        3 => geometry_steps(name, img.to_rgb32f(), opts, geometry)?,
        c => {
            return Err(Rejection::new(
                RejectReason::Shape,
                name,
                format!("images convert to 1 or 3 channels; the model wants {c}"),
            ));
        }
    };
    let hwc = Array3::from_shape_vec((h, w, channels), data)
        .map_err(|e| Rejection::new(RejectReason::Decode, name, e))?;
    let mut sample = match layout {
        Layout::Nhwc => hwc.into_dyn(),
        Layout::Nchw => hwc.permuted_axes([2, 0, 1]).as_standard_layout().into_owned().into_dyn(),
    };
    normalize(&mut sample, false, &opts.normalization);
    Ok(sample)
}

/// Reads the header, refuses too many pixels, then decodes (with an allocation limit as well).
fn decode_capped(name: &str, bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, Rejection> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Rejection::new(RejectReason::Io, name, e))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => {}
        Some(f) => {
            return Err(Rejection::new(
                RejectReason::Unsupported,
                name,
                format!("{f:?} images are not supported (PNG or JPEG)"),
            ));
        }
        None => return Err(Rejection::new(RejectReason::Decode, name, "not a PNG or JPEG image")),
    }
    let mut limits = Limits::default();
    // The largest buffer a capped image needs: RGBA with 16-bit channels, plus the decoder's slack.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(1 << 20));
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(|e| image_rejection(name, e))?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            name,
            format!("the image declares {w}×{h} = {pixels} pixels; the limit is {max_pixels}"),
        ));
    }
    DynamicImage::from_decoder(decoder).map_err(|e| image_rejection(name, e))
}

fn image_rejection(name: &str, e: ImageError) -> Rejection {
    match e {
        ImageError::Limits(e) => Rejection::new(RejectReason::TooLarge, name, e),
        ImageError::IoError(e) => {
            Rejection::new(RejectReason::Decode, name, format!("truncated image ({e})"))
        }
        e => Rejection::new(RejectReason::Decode, name, e),
    }
}

/// Resize and crop; returns `(height, width, interleaved pixels)`.
fn geometry_steps<P>(
    name: &str,
    mut img: ImageBuffer<P, Vec<f32>>,
    opts: &DecodeOptions,
    model: Option<(usize, usize, usize)>,
) -> Result<(usize, usize, Vec<f32>), Rejection>
where
    P: Pixel<Subpixel = f32> + 'static,
{
    let resize = match (opts.image.resize, opts.image.crop, model) {
        (Some(r), _, _) => Some(r),
        (None, None, Some((_, h, w))) => Some([h as u32, w as u32]),
        _ => None,
    };
    if let Some([h, w]) = resize
        && img.dimensions() != (w, h)
    {
        img = imageops::resize(&img, w, h, FilterType::Triangle);
    }
    if let Some([ch, cw]) = opts.image.crop {
        let (w, h) = img.dimensions();
        if ch > h || cw > w {
            return Err(Rejection::new(
                RejectReason::Shape,
                name,
                format!("cannot crop {ch}×{cw} out of a {h}×{w} image"),
            ));
        }
        img = imageops::crop_imm(&img, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image();
    }
    let (w, h) = img.dimensions();
    if let Some((_, mh, mw)) = model
        && (h as usize, w as usize) != (mh, mw)
    {
        return Err(Rejection::new(
            RejectReason::Shape,
            name,
            format!("the preprocessed image is {h}×{w}; the model takes {mh}×{mw} (check resize and crop)"),
        ));
    }
    Ok((h as usize, w as usize, img.into_raw()))
}

#[cfg(test)]
mod tests;
