//! The in-memory dataset shape every loader produces.

use selfsup_core::{Error, Result};

/// Images as `u8` in (N, C, H, W) order, with optional labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    images: Vec<u8>,
    n: usize,
    channels: usize,
    height: usize,
    width: usize,
    labels: Option<Vec<u32>>,
    class_names: Vec<String>,
}

impl Dataset {
    /// Builds a dataset, checking that the buffer and labels match the shape
    /// and that labels are below the number of classes.
    pub fn new(
        images: Vec<u8>,
        shape: (usize, usize, usize, usize),
        labels: Option<Vec<u32>>,
        class_names: Vec<String>,
    ) -> Result<Self> {
        let (n, channels, height, width) = shape;
        let len = [channels, height, width]
            .iter()
            .try_fold(n, |a, &d| a.checked_mul(d));
        if len != Some(images.len()) {
            return Err(Error::invalid(
                "dataset",
                format!(
                    "{} image bytes for shape {n}x{channels}x{height}x{width}",
                    images.len()
                ),
            ));
        }
        if let Some(l) = &labels {
            if l.len() != n {
                return Err(Error::invalid(
                    "dataset",
                    format!("{} labels for {n} images", l.len()),
                ));
            }
            if let Some(&bad) = l.iter().find(|&&y| y as usize >= class_names.len()) {
                return Err(Error::invalid(
                    "dataset",
                    format!("label {bad} but only {} classes", class_names.len()),
                ));
            }
        }
        Ok(Self {
            images,
            n,
            channels,
            height,
            width,
            labels,
            class_names,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.n
    }
    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    /// (C, H, W).
    pub fn image_shape(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }
    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }
    /// The pixels of image `i`, (C, H, W) order.
    pub fn image(&self, i: usize) -> &[u8] {
        let l = self.image_len();
        &self.images[i * l..(i + 1) * l]
    }
    /// All pixels.
    pub fn pixels(&self) -> &[u8] {
        &self.images
    }
    /// Labels, if the dataset has them.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }
    /// Class names (index = label).
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }
    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The pixels of the images at `indices`, in that order, in one
    /// contiguous (n, C, H, W) buffer.
    pub fn pixels_of(&self, indices: &[usize]) -> Vec<u8> {
        let mut px = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            px.extend_from_slice(self.image(i));
        }
        px
    }

    /// A new dataset holding the images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset {
            images: self.pixels_of(indices),
            n: indices.len(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            labels: self
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            class_names: self.class_names.clone(),
        }
    }

    /// The same images under new labels and class names (checked as in
    /// [`Dataset::new`]); the pixels are moved, not copied.
    pub fn relabel(self, labels: Vec<u32>, class_names: Vec<String>) -> Result<Dataset> {
        Dataset::new(
            self.images,
            (self.n, self.channels, self.height, self.width),
            Some(labels),
            class_names,
        )
    }

    /// The first `n` images (all if fewer).
    pub fn take(&self, n: usize) -> Dataset {
        let idx: Vec<usize> = (0..n.min(self.n)).collect();
        self.subset(&idx)
    }
}

/// A training set and a test set of the same kind of images.
#[derive(Debug, Clone)]
pub struct DatasetPair {
    /// Short name (`fashion-mnist`) or the path it came from.
    pub name: String,
    /// Training images (labels hidden from everything but the K-shot split).
    pub train: Dataset,
    /// Test images, used only for final numbers.
    pub test: Dataset,
}

impl DatasetPair {
    /// Checks that train and test agree on image shape and classes.
    pub fn new(name: String, train: Dataset, test: Dataset) -> Result<Self> {
        if train.image_shape() != test.image_shape() {
            return Err(Error::invalid(
                "dataset",
                format!(
                    "{name}: train images are {:?} but test images are {:?}",
                    train.image_shape(),
                    test.image_shape()
                ),
            ));
        }
        Ok(Self { name, train, test })
    }
}
