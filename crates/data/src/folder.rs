//! Image folders: PNG and JPEG files decoded, centre-cropped to a square and
//! resized, for users who bring their own pictures.
//!
//! - [`load_images`]: every image under a directory (recursively, in sorted
//!   path order), unlabeled.
//! - [`load_classes`]: one sub-folder per class (ImageNet / Tiny ImageNet
//!   layout), labels in sorted folder-name order.

use crate::dataset::Dataset;
use image::imageops::FilterType;
use image::DynamicImage;
use selfsup_core::{Error, Result};
use std::path::{Path, PathBuf};

/// File extensions read (case-insensitive).
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Image files under `dir`, recursively, sorted by path. Symbolic links
/// to directories are not followed (a link to `.` or `..` would loop or
/// pull in other classes' images), and a file reached twice (through a
/// link to a file) counts once.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))?;
        for e in entries {
            let e = e.map_err(|e| Error::io(&d, e))?;
            let p = e.path();
            let link = e
                .file_type()
                .map_err(|err| Error::io(&p, err))?
                .is_symlink();
            if p.is_dir() {
                if !link {
                    stack.push(p);
                }
            } else if is_image(&p) && seen.insert(std::fs::canonicalize(&p).unwrap_or(p.clone())) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Decodes one file into `channels` (1 or 3) x `size` x `size` `u8` pixels,
/// centre-cropping to a square first so nothing is stretched.
pub fn decode(path: &Path, size: usize, channels: usize) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(&bytes, size, channels).map_err(|e| match e {
        Error::Format { msg, .. } => Error::format(path, msg),
        other => other,
    })
}

thread_local! {
    /// Whether this thread's image-folder loads skip unreadable images;
    /// see [`set_skip_bad_images`].
    static SKIP_BAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Images skipped since the last [`set_skip_bad_images`].
    static SKIPPED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes this thread's image-folder loads skip images that cannot be
/// decoded (each is logged as a warning with its path and error) instead of
/// stopping at the first; resets the count [`skipped_images`] reports.
pub fn set_skip_bad_images(skip: bool) {
    SKIP_BAD.set(skip);
    SKIPPED.set(0);
}

/// How many images this thread's loads skipped since [`set_skip_bad_images`].
pub fn skipped_images() -> usize {
    SKIPPED.get()
}

/// [`decode`], or `None` for an unreadable image when skipping is on.
fn decode_or_skip(path: &Path, size: usize, channels: usize) -> Result<Option<Vec<u8>>> {
    match decode(path, size, channels) {
        Ok(px) => Ok(Some(px)),
        Err(e) if SKIP_BAD.get() => {
            SKIPPED.set(SKIPPED.get() + 1);
            tracing::warn!("skipping an unreadable image: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// [`decode`] for an encoded image already in memory (a parquet cell, say);
/// errors name `<memory>` and are meant to be re-labelled by the caller.
pub fn decode_bytes(bytes: &[u8], size: usize, channels: usize) -> Result<Vec<u8>> {
    check_shape(size, channels)?;
    let path = Path::new("<memory>");
    let img = image::load_from_memory(bytes)
        .map_err(|e| Error::format(path, format!("not a readable PNG/JPEG image: {e}")))?;
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(Error::format(path, "image has no pixels"));
    }
    let side = w.min(h);
    let img = img.crop_imm((w - side) / 2, (h - side) / 2, side, side);
    let img = if side as usize == size {
        img
    } else {
        img.resize_exact(size as u32, size as u32, FilterType::Triangle)
    };
    Ok(match channels {
        1 => DynamicImage::ImageLuma8(img.to_luma8()).into_bytes(),
        3 => {
            let rgb = img.to_rgb8();
            // Interleaved HWC → planar CHW.
            let mut out = vec![0u8; 3 * size * size];
            for (i, px) in rgb.pixels().enumerate() {
                for c in 0..3 {
                    out[c * size * size + i] = px[c];
                }
            }
            out
        }
        other => {
            return Err(Error::invalid(
                "--channels",
                format!("{other} channels; images load as 1 (gray) or 3 (RGB)"),
            ))
        }
    })
}

/// The largest side images are resized to.
pub const MAX_SIZE: usize = 2048;

/// Refuses a side outside 8..=[`MAX_SIZE`] and channels other than 1 or 3,
/// before any buffer is sized from them.
fn check_shape(size: usize, channels: usize) -> Result<()> {
    if !(8..=MAX_SIZE).contains(&size) {
        return Err(Error::invalid(
            "--size",
            format!("{size} pixels; images must be 8x8 to {MAX_SIZE}x{MAX_SIZE}"),
        ));
    }
    if channels != 1 && channels != 3 {
        return Err(Error::invalid(
            "--channels",
            format!("{channels} channels; images load as 1 (gray) or 3 (RGB)"),
        ));
    }
    Ok(())
}

/// Every image under `dir` as an unlabeled dataset of `channels` x `size`
/// x `size` images; also returns the files in dataset order.
pub fn load_images(dir: &Path, size: usize, channels: usize) -> Result<(Dataset, Vec<PathBuf>)> {
    check_shape(size, channels)?;
    if !dir.is_dir() {
        return Err(Error::invalid(
            "image folder",
            format!("{} is not a directory", dir.display()),
        ));
    }
    let files = image_files(dir)?;
    if files.is_empty() {
        return Err(Error::format(
            dir,
            format!("no images found (looked for {})", EXTENSIONS.join(", ")),
        ));
    }
    let mut px = Vec::with_capacity(files.len() * channels * size * size);
    let mut kept = Vec::with_capacity(files.len());
    for f in files {
        if let Some(p) = decode_or_skip(&f, size, channels)? {
            px.extend(p);
            kept.push(f);
        }
    }
    if kept.is_empty() {
        return Err(Error::format(dir, "none of its images could be read"));
    }
    let ds = Dataset::new(px, (kept.len(), channels, size, size), None, Vec::new())?;
    Ok((ds, kept))
}

/// A labeled dataset from one sub-folder per class under `dir` (classes in
/// sorted name order).
pub fn load_classes(dir: &Path, size: usize, channels: usize) -> Result<Dataset> {
    check_shape(size, channels)?;
    let classes = class_dirs(dir)?;
    if classes.is_empty() {
        return Err(Error::format(
            dir,
            "no class sub-folders found (expected <dir>/<class>/<image>.png|jpg)",
        ));
    }
    let (mut px, mut labels, mut names) = (Vec::new(), Vec::new(), Vec::new());
    for (k, c) in classes.iter().enumerate() {
        let (ds, _) = load_images(c, size, channels)?;
        px.extend_from_slice(ds.pixels());
        labels.extend(std::iter::repeat_n(k as u32, ds.len()));
        names.push(
            c.file_name()
                .map_or_else(|| k.to_string(), |n| n.to_string_lossy().into_owned()),
        );
    }
    Dataset::new(
        px,
        (labels.len(), channels, size, size),
        Some(labels),
        names,
    )
}

fn class_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    Ok(classes)
}

/// True when `dir` looks like an image-folder dataset: class sub-folders
/// (directly, or under `train/`) that hold PNG/JPEG files.
pub fn has_class_folders(dir: &Path) -> bool {
    let base = if dir.join("train").is_dir() {
        dir.join("train")
    } else {
        dir.to_path_buf()
    };
    class_dirs(&base).is_ok_and(|c| {
        c.iter()
            .any(|d| image_files(d).is_ok_and(|f| !f.is_empty()))
    })
}

/// Labels the images of `files` by `class` names looked up in `names`.
fn labeled_files(
    files: &[(PathBuf, String)],
    names: &[String],
    size: usize,
    channels: usize,
) -> Result<Dataset> {
    let mut px = Vec::with_capacity(files.len() * channels * size * size);
    let mut labels = Vec::with_capacity(files.len());
    for (f, class) in files {
        let y = names.iter().position(|n| n == class).ok_or_else(|| {
            Error::format(
                f,
                format!("class `{class}` does not appear among the training classes"),
            )
        })?;
        if let Some(p) = decode_or_skip(f, size, channels)? {
            px.extend(p);
            labels.push(y as u32);
        }
    }
    Dataset::new(
        px,
        (labels.len(), channels, size, size),
        Some(labels),
        names.to_vec(),
    )
}

/// Tiny ImageNet's validation layout: `val/images/*.JPEG` labeled by
/// `val/val_annotations.txt` (`file<TAB>class<TAB>...`).
fn annotated_split(dir: &Path, names: &[String], size: usize, channels: usize) -> Result<Dataset> {
    let ann = dir.join("val_annotations.txt");
    let text = std::fs::read_to_string(&ann).map_err(|e| Error::io(&ann, e))?;
    let mut files = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let mut cols = line.split('\t');
        match (cols.next(), cols.next()) {
            (Some(f), Some(c)) => files.push((dir.join("images").join(f), c.to_string())),
            _ => {
                return Err(Error::format(
                    &ann,
                    format!("line {}: expected `file<TAB>class`", i + 1),
                ))
            }
        }
    }
    labeled_files(&files, names, size, channels)
}

/// Fails when a test file is also a training file (the same file reached
/// through a link, or a link in one split to the other): a test score on
/// training images means nothing.
fn refuse_shared_files(train_dir: &Path, test: &[(PathBuf, String)]) -> Result<()> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut train = std::collections::HashSet::new();
    for c in class_dirs(train_dir)? {
        for f in image_files(&c)? {
            train.insert(canonical(&f));
        }
    }
    match test.iter().find(|(f, _)| train.contains(&canonical(f))) {
        Some((f, _)) => Err(Error::format(
            f,
            "is also a training image (the same file in train/ and the test split); remove one",
        )),
        None => Ok(()),
    }
}

/// An image-folder dataset as a train/test pair:
/// - `<dir>/train/<class>/...` with `<dir>/test/<class>/...` (or `val/`,
///   `valid/`; Tiny ImageNet's `val/val_annotations.txt` is understood);
/// - otherwise `<dir>/<class>/...`, where every 5th image of each class (in
///   path order) is held out as the test split.
///
/// Classes are the training sub-folders in sorted order; images are
/// centre-cropped and resized to `size` x `size`, 1 or 3 channels.
pub fn load_split_folders(
    dir: &Path,
    name: &str,
    size: usize,
    channels: usize,
) -> Result<crate::DatasetPair> {
    check_shape(size, channels)?;
    let train_dir = dir.join("train");
    if train_dir.is_dir() {
        let train = load_classes(&train_dir, size, channels)?;
        let names = train.class_names().to_vec();
        let test_dir = ["test", "val", "valid", "validation"]
            .iter()
            .map(|t| dir.join(t))
            .find(|d| d.is_dir())
            .ok_or_else(|| {
                Error::format(
                    dir,
                    "has train/ but no test/ (or val/) split of class folders",
                )
            })?;
        let test = if test_dir.join("val_annotations.txt").is_file() {
            annotated_split(&test_dir, &names, size, channels)?
        } else {
            let mut files = Vec::new();
            for c in class_dirs(&test_dir)? {
                let class = c
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                for f in image_files(&c)? {
                    files.push((f, class.clone()));
                }
            }
            if files.is_empty() {
                return Err(Error::format(&test_dir, "no images in its class folders"));
            }
            refuse_shared_files(&train_dir, &files)?;
            labeled_files(&files, &names, size, channels)?
        };
        return crate::DatasetPair::new(name.to_string(), train, test);
    }
    let all = load_classes(dir, size, channels)?;
    let labels = all.labels().unwrap_or_default();
    let mut seen = vec![0usize; all.num_classes()];
    let (mut tr, mut te) = (Vec::new(), Vec::new());
    for (i, &y) in labels.iter().enumerate() {
        let k = &mut seen[y as usize];
        if *k % 5 == 4 {
            te.push(i);
        } else {
            tr.push(i);
        }
        *k += 1;
    }
    if te.is_empty() {
        return Err(Error::format(
            dir,
            "too few images to hold out a test split (need 5 or more in a class)",
        ));
    }
    crate::DatasetPair::new(name.to_string(), all.subset(&tr), all.subset(&te))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
        img.save(path).unwrap();
    }

    #[test]
    fn folders_decode_crop_resize_and_label() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("cats");
        let b = d.path().join("dogs");
        std::fs::create_dir_all(a.join("nested")).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        // 20x10: the centre 10x10 crop is the middle, red; the borders blue.
        write_png(&a.join("1.png"), 20, 10, |x, _| {
            if (5..15).contains(&x) {
                [200, 0, 0]
            } else {
                [0, 0, 200]
            }
        });
        write_png(&a.join("nested/2.PNG"), 8, 8, |_, _| [10, 20, 30]);
        write_png(&b.join("3.png"), 16, 16, |_, _| [0, 255, 0]);
        std::fs::write(b.join("notes.txt"), "not an image").unwrap();
        let ds = load_classes(d.path(), 8, 3).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.labels().unwrap(), &[0, 0, 1]);
        assert_eq!(ds.class_names(), &["cats".to_string(), "dogs".to_string()]);
        let first = ds.image(0);
        assert!(
            first[..64].iter().all(|&v| v == 200),
            "red plane, no blue border"
        );
        assert!(first[128..].iter().all(|&v| v == 0), "blue plane empty");
        assert_eq!(&ds.image(1)[..1], &[10]);
        assert_eq!(&ds.image(1)[64..65], &[20], "planar CHW layout");
        let (gray, files) = load_images(&a, 8, 1).unwrap();
        assert_eq!((gray.len(), gray.image_shape()), (2, (1, 8, 8)));
        assert!(files[1].ends_with("nested/2.PNG"));
    }

    #[test]
    fn split_folders_train_test_annotations_and_holdout() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for (split, class, shade) in [
            ("train", "duck", 10u8),
            ("train", "fish", 200),
            ("test", "fish", 201),
        ] {
            std::fs::create_dir_all(r.join(split).join(class)).unwrap();
            for i in 0..3 {
                write_png(
                    &r.join(split).join(class).join(format!("{i}.png")),
                    9,
                    9,
                    |_, _| [shade; 3],
                );
            }
        }
        assert!(has_class_folders(r));
        let pair = load_split_folders(r, "toy", 8, 1).unwrap();
        assert_eq!((pair.train.len(), pair.test.len()), (6, 3));
        assert_eq!(
            pair.test.labels().unwrap(),
            &[1, 1, 1],
            "fish is class 1 of train"
        );
        // Tiny ImageNet's val layout.
        std::fs::remove_dir_all(r.join("test")).unwrap();
        std::fs::create_dir_all(r.join("val/images")).unwrap();
        write_png(&r.join("val/images/v0.JPEG"), 8, 8, |_, _| [5; 3]);
        write_png(&r.join("val/images/v1.JPEG"), 8, 8, |_, _| [250; 3]);
        std::fs::write(
            r.join("val/val_annotations.txt"),
            "v0.JPEG\tduck\t0\nv1.JPEG\tfish\t0\n",
        )
        .unwrap();
        let pair = load_split_folders(r, "toy", 8, 3).unwrap();
        assert_eq!(pair.test.labels().unwrap(), &[0, 1]);
        std::fs::write(r.join("val/val_annotations.txt"), "v0.JPEG\tgoose\n").unwrap();
        let e = load_split_folders(r, "toy", 8, 3).unwrap_err().to_string();
        assert!(e.contains("v0.JPEG") && e.contains("goose"), "{e}");
        // No train/: every 5th image of a class is held out.
        let flat = tempfile::tempdir().unwrap();
        for class in ["a", "b"] {
            std::fs::create_dir_all(flat.path().join(class)).unwrap();
            for i in 0..10 {
                write_png(
                    &flat.path().join(class).join(format!("{i}.png")),
                    8,
                    8,
                    |_, _| [1; 3],
                );
            }
        }
        let pair = load_split_folders(flat.path(), "flat", 8, 1).unwrap();
        assert_eq!((pair.train.len(), pair.test.len()), (16, 4));
        assert_eq!(pair.test.labels().unwrap(), &[0, 0, 1, 1]);
    }

    #[test]
    fn symlinked_folders_are_not_followed_and_files_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("cats");
        std::fs::create_dir(&class).unwrap();
        let other = dir.path().join("dogs");
        std::fs::create_dir(&other).unwrap();
        write_png(&class.join("a.png"), 8, 8, |_, _| [1, 2, 3]);
        write_png(&other.join("b.png"), 8, 8, |_, _| [4, 5, 6]);
        // Two links to `..` (a loop that also reaches the other class), a
        // link to `.`, and a second name for a.png.
        std::os::unix::fs::symlink("..", class.join("up")).unwrap();
        std::os::unix::fs::symlink("..", class.join("up2")).unwrap();
        std::os::unix::fs::symlink(".", class.join("self")).unwrap();
        std::os::unix::fs::symlink("a.png", class.join("again.png")).unwrap();
        let files = image_files(&class).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].ends_with("again.png") || files[0].ends_with("a.png"));
    }

    #[test]
    fn a_file_in_both_train_and_test_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for split in ["train", "test"] {
            std::fs::create_dir_all(dir.path().join(split).join("cats")).unwrap();
        }
        let a = dir.path().join("train/cats/a.png");
        write_png(&a, 8, 8, |_, _| [1, 2, 3]);
        write_png(&dir.path().join("train/cats/b.png"), 8, 8, |_, _| [3, 2, 1]);
        std::os::unix::fs::symlink(&a, dir.path().join("test/cats/a.png")).unwrap();
        let e = load_split_folders(dir.path(), "pets", 8, 3)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test/cats/a.png") && e.contains("also a training image"),
            "{e}"
        );
    }

    #[test]
    fn sizes_and_channels_are_checked_before_any_buffer_is_sized() {
        let dir = tempfile::tempdir().unwrap();
        for (size, channels, flag) in [
            (usize::MAX / 2, 3, "--size"),
            (MAX_SIZE + 1, 1, "--size"),
            (4, 3, "--size"),
            (32, usize::MAX, "--channels"),
            (32, 2, "--channels"),
        ] {
            let e = load_images(dir.path(), size, channels)
                .unwrap_err()
                .to_string();
            assert!(e.contains(flag), "{size} {channels}: {e}");
            let e = decode_bytes(b"", size, channels).unwrap_err().to_string();
            assert!(e.contains(flag), "{size} {channels}: {e}");
        }
        let e = Dataset::new(vec![0; 16], (1 << 22, 1, 1 << 21, 1 << 21), None, vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("image bytes for shape"), "{e}");
    }

    #[test]
    fn unreadable_images_can_be_skipped_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("cats");
        std::fs::create_dir(&class).unwrap();
        write_png(&class.join("a.png"), 8, 8, |_, _| [1, 2, 3]);
        std::fs::write(class.join("broken.png"), b"not a png").unwrap();
        let e = load_images(&class, 8, 3).unwrap_err().to_string();
        assert!(e.contains("broken.png"), "{e}");
        set_skip_bad_images(true);
        let loaded = load_images(&class, 8, 3);
        let skipped = skipped_images();
        set_skip_bad_images(false);
        let (ds, files) = loaded.unwrap();
        assert_eq!((ds.len(), files.len(), skipped), (1, 1, 1));
        assert!(files[0].ends_with("a.png"));
    }

    #[test]
    fn bad_folders_and_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let e = load_images(d.path(), 8, 1).unwrap_err().to_string();
        assert!(e.contains("no images found"), "{e}");
        std::fs::write(d.path().join("broken.jpg"), b"\xff\xd8\xff garbage").unwrap();
        let e = load_images(d.path(), 8, 1).unwrap_err().to_string();
        assert!(e.contains("broken.jpg") && e.contains("PNG/JPEG"), "{e}");
        let e = load_images(&d.path().join("missing"), 8, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing") && e.contains("not a directory"),
            "{e}"
        );
        assert!(load_images(d.path(), 4, 1).is_err());
        assert!(load_classes(d.path(), 8, 1).is_err());
    }
}
