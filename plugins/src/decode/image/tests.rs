use std::io::Cursor;

use image::{ImageFormat, Rgb, RgbImage};

use super::*;
use crate::decode::{DEFAULT_MAX_IMAGE_PIXELS, ImageOptions, Normalization, decode_bytes};

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn opts(shape: &[usize], layout: Layout) -> DecodeOptions {
    DecodeOptions {
        input_shape: shape.to_vec(),
        normalization: Normalization { layout, ..Default::default() },
        ..Default::default()
    }
}

/// A 10 × 6 (w × h) RGB picture whose pixel (x, y) is (10x, 20y, 255 - 10x).
fn pattern() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(10, 6, |x, y| {
        Rgb([10 * x as u8, 20 * y as u8, 255 - 10 * x as u8])
    }))
}

#[test]
fn grey_png_at_the_model_size_is_exact() {
    let img =
        DynamicImage::ImageLuma8(image::GrayImage::from_fn(28, 28, |x, y| image::Luma([(x * 9 + y) as u8])));
    let a = decode_bytes("g.png", "png", &encode(&img, ImageFormat::Png), &opts(&[1, 28, 28], Layout::Nchw))
        .unwrap();
    assert_eq!(a.shape(), &[1, 1, 28, 28]);
    assert_eq!(a[[0, 0, 2, 3]], (3.0 * 9.0 + 2.0) / 255.0);
}

#[test]
fn centre_crop_in_both_layouts() {
    let png = encode(&pattern(), ImageFormat::Png);
    let mut o = opts(&[4, 4, 3], Layout::Nhwc);
    o.image.crop = Some([4, 4]);
    let a = decode_bytes("p.png", "png", &png, &o).unwrap();
    assert_eq!(a.shape(), &[1, 4, 4, 3]);
    // The crop starts at x = (10 - 4) / 2 = 3, y = (6 - 4) / 2 = 1.
    assert_eq!(a[[0, 0, 0, 0]], 30.0 / 255.0);
    assert_eq!(a[[0, 0, 0, 1]], 20.0 / 255.0);
    assert_eq!(a[[0, 2, 1, 2]], (255.0 - 40.0) / 255.0);
    let mut o = opts(&[3, 4, 4], Layout::Nchw);
    o.image.crop = Some([4, 4]);
    let b = decode_bytes("p.png", "png", &png, &o).unwrap();
    assert_eq!(b.shape(), &[1, 3, 4, 4]);
    for (c, y, x) in [(0, 0, 0), (1, 3, 2), (2, 2, 1)] {
        assert_eq!(b[[0, c, y, x]], a[[0, y, x, c]]);
    }
}

#[test]
fn resize_then_crop_and_the_default_resize() {
    let white = DynamicImage::ImageRgb8(RgbImage::from_pixel(56, 40, Rgb([255, 255, 255])));
    let png = encode(&white, ImageFormat::Png);
    // Neither resize nor crop: straight to the model's size.
    let a = decode_bytes("w.png", "png", &png, &opts(&[3, 28, 28], Layout::Nchw)).unwrap();
    assert_eq!(a.shape(), &[1, 3, 28, 28]);
    assert!(a.iter().all(|v| (*v - 1.0).abs() < 1e-6));
    let mut o = opts(&[3, 28, 28], Layout::Nchw);
    o.image.resize = Some([32, 32]);
    o.image.crop = Some([28, 28]);
    assert_eq!(decode_bytes("w.png", "png", &png, &o).unwrap().shape(), &[1, 3, 28, 28]);
    // A geometry that does not end at the model's size is a shape rejection naming both.
    o.image.crop = Some([20, 20]);
    let e = decode_bytes("w.png", "png", &png, &o).unwrap_err();
    assert_eq!(e.reason, RejectReason::Shape);
    assert!(e.message.contains("20×20") && e.message.contains("28×28"), "{}", e.message);
    o.image.crop = Some([40, 40]);
    assert_eq!(decode_bytes("w.png", "png", &png, &o).unwrap_err().reason, RejectReason::Shape);
}

#[test]
fn colour_to_grey_and_normalisation_per_channel() {
    let png =
        encode(&DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 4, Rgb([255, 255, 255]))), ImageFormat::Png);
    let a = decode_bytes("c.png", "png", &png, &opts(&[1, 4, 4], Layout::Nchw)).unwrap();
    assert!(a.iter().all(|v| (*v - 1.0).abs() < 1e-6));
    let mut o = opts(&[4, 4, 3], Layout::Nhwc);
    o.normalization.mean = vec![0.5, 0.0, 1.0];
    o.normalization.std = vec![0.5, 1.0, 2.0];
    let a = decode_bytes("c.png", "png", &png, &o).unwrap();
    assert_eq!((a[[0, 1, 1, 0]], a[[0, 1, 1, 1]], a[[0, 1, 1, 2]]), (1.0, 1.0, 0.0));
    // Four channels is not something an image converts to.
    let mut o = opts(&[4, 4, 4], Layout::Nchw);
    o.image.channels = None;
    assert_eq!(decode_bytes("c.png", "png", &png, &o).unwrap_err().reason, RejectReason::Shape);
}

#[test]
fn jpeg_decodes_close_to_the_original() {
    let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 16, Rgb([200, 100, 50])));
    let jpg = encode(&img, ImageFormat::Jpeg);
    let a = decode_bytes("c.jpg", "jpg", &jpg, &opts(&[3, 16, 16], Layout::Nchw)).unwrap();
    for (c, want) in [(0, 200.0), (1, 100.0), (2, 50.0)] {
        let got = a[[0, c, 8, 8]] * 255.0;
        assert!((got - want).abs() < 4.0, "channel {c}: {got} vs {want}");
    }
}

/// The CRC-32 of PNG chunks (bitwise; small inputs only).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn a_huge_declared_size_is_refused_from_the_header() {
    // A real 1×1 PNG whose header is rewritten to declare 100000 × 100000 pixels (10^10, 40 GB as
    // RGBA): refused from the header, without allocating.
    let mut png = encode(&DynamicImage::ImageLuma8(image::GrayImage::new(1, 1)), ImageFormat::Png);
    // Signature (8) + length (4) + "IHDR" (4), then width and height, then the rest and the CRC.
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let t0 = std::time::Instant::now();
    let e = decode_bytes("bomb.png", "png", &png, &opts(&[1, 28, 28], Layout::Nchw)).unwrap_err();
    assert_eq!(e.reason, RejectReason::TooLarge, "{}", e.message);
    assert!(e.message.contains("100000×100000"), "{}", e.message);
    assert!(t0.elapsed().as_secs() < 2);
    // A real image over a small cap.
    let png = encode(&pattern(), ImageFormat::Png);
    let mut o = opts(&[3, 4, 4], Layout::Nchw);
    o.image = ImageOptions { max_pixels: 59, ..Default::default() };
    assert_eq!(decode_bytes("p.png", "png", &png, &o).unwrap_err().reason, RejectReason::TooLarge);
    o.image.max_pixels = DEFAULT_MAX_IMAGE_PIXELS;
    assert!(decode_bytes("p.png", "png", &png, &o).is_ok());
}

#[test]
fn broken_and_foreign_images() {
    let png = encode(&pattern(), ImageFormat::Png);
    let o = opts(&[3, 6, 10], Layout::Nchw);
    let e = decode_bytes("t.png", "png", &png[..png.len() / 2], &o).unwrap_err();
    assert_eq!(e.reason, RejectReason::Decode, "{}", e.message);
    assert_eq!(
        decode_bytes("g.png", "png", b"not an image at all", &o).unwrap_err().reason,
        RejectReason::Decode
    );
    let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
    assert_eq!(decode_bytes("x.png", "png", gif, &o).unwrap_err().reason, RejectReason::Unsupported);
    let e = decode_bytes("p.png", "png", &png, &opts(&[1, 6, 10, 1], Layout::Nchw)).unwrap_err();
    assert_eq!(e.reason, RejectReason::Shape);
    assert!(e.message.contains("rank-3"), "{}", e.message);
}

#[test]
fn geometry_is_checked_against_the_model() {
    let n = |layout| Normalization { layout, ..Default::default() };
    let img = |resize, crop, channels| ImageOptions { resize, crop, channels, ..Default::default() };
    assert!(
        check_geometry(&[3, 224, 224], &n(Layout::Nchw), &img(Some([256, 256]), Some([224, 224]), Some(3)))
            .is_empty()
    );
    assert!(check_geometry(&[224, 224, 3], &n(Layout::Nhwc), &img(None, Some([224, 224]), None)).is_empty());
    let p = check_geometry(&[1, 28, 28], &n(Layout::Nchw), &img(Some([32, 32]), None, Some(3)));
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].contains("channels = 3") && p[1].contains("resize = [32, 32]"), "{p:?}");
    let p = check_geometry(&[784], &n(Layout::Nchw), &img(None, Some([28, 28]), None));
    assert!(p[0].contains("rank-3"), "{p:?}");
    assert!(check_geometry(&[784], &n(Layout::Nchw), &ImageOptions::default()).is_empty());
    let mut three = n(Layout::Nchw);
    three.mean = vec![0.5, 0.5];
    assert!(check_geometry(&[3, 8, 8], &three, &ImageOptions::default())[0].contains("mean has 2 values"));
}
