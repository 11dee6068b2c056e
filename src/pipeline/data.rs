//! Loading the data of a run: the dataset with its normalisation, a class
//! selection, and the pools of unlabeled images.

use crate::core::{rng, Error, Normalization, Result};
use crate::data::{batch, split, Dataset, DatasetPair};
use rand::seq::SliceRandom;

/// A loaded dataset with its normalisation (fitted on training pixels, no
/// labels involved).
pub struct Prepared {
    /// Train and test sets.
    pub pair: DatasetPair,
    /// Input normalisation.
    pub norm: Normalization,
    /// With a class selection that pretrains on every class: the whole
    /// training set.
    pub all_classes: Option<AllClasses>,
    /// Images of an image folder skipped as unreadable
    /// (`data.skip_bad_images`).
    pub skipped_images: usize,
}

impl Prepared {
    /// `pair` with its input normalisation fitted on every training image.
    pub fn fitted(pair: DatasetPair, skipped_images: usize) -> Self {
        let all: Vec<usize> = (0..pair.train.len()).collect();
        let norm = batch::fit_normalization(&pair.train, &all);
        Self {
            pair,
            norm,
            all_classes: None,
            skipped_images,
        }
    }
}

/// The training set before a class selection, kept as the pretraining
/// source.
pub struct AllClasses {
    /// The dataset's name without the selection.
    pub name: String,
    /// Every training image.
    pub train: Dataset,
    /// For each image of the selected training set, its index in `train`.
    pub index: Vec<usize>,
}

/// Loads a dataset by name or path ([`crate::data::load`]), or through
/// candle-datasets for a `candle:NAME` (builds with the `candle-datasets`
/// feature).
pub fn load_dataset(name: &str) -> Result<crate::data::DatasetPair> {
    match name.strip_prefix("candle:") {
        #[cfg(feature = "candle-datasets")]
        Some(candle) => crate::interop::load_candle(candle),
        #[cfg(not(feature = "candle-datasets"))]
        Some(_) => Err(Error::invalid(
            "--dataset",
            format!(
                "{name}: this build has no candle-datasets support; build with \
                 `--features candle-datasets`"
            ),
        )),
        None => crate::data::load(name),
    }
}

/// Loads (and optionally truncates) a dataset.
pub fn prepare(
    dataset: &str,
    max_train: Option<usize>,
    max_test: Option<usize>,
) -> Result<Prepared> {
    let mut pair = load_dataset(dataset)?;
    if let Some(n) = max_train {
        pair.train = pair.train.take(n);
    }
    if let Some(n) = max_test {
        pair.test = pair.test.take(n);
    }
    if pair.train.labels().is_none() || pair.test.labels().is_none() {
        return Err(Error::invalid(
            "data.dataset",
            format!("{dataset} has no labels; transfer needs a labeled dataset"),
        ));
    }
    let (_, h, w) = pair.train.image_shape();
    if h != w || h < 8 {
        return Err(Error::invalid(
            "data.dataset",
            format!("{dataset}: images are {h}x{w}; selfsup needs square images of at least 8x8"),
        ));
    }
    Ok(Prepared::fitted(pair, 0))
}

/// Keeps only the named classes of both splits (relabelled 0..n in the
/// given order); no-op when `classes` is empty. With `keep_all`, the whole
/// training set stays available as the pretraining source
/// ([`Prepared::all_classes`]) and the normalisation fitted on it is kept;
/// otherwise the normalisation is refitted on the selection.
pub fn select_classes(prep: Prepared, classes: &[String], keep_all: bool) -> Result<Prepared> {
    if classes.is_empty() {
        return Ok(prep);
    }
    let names = prep.pair.train.class_names();
    let map: Vec<usize> = classes
        .iter()
        .map(|c| {
            names.iter().position(|n| n == c).ok_or_else(|| {
                Error::invalid(
                    "data.classes",
                    format!(
                        "{} has no class `{c}`; its classes include: {}",
                        prep.pair.name,
                        names
                            .iter()
                            .take(12)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
        })
        .collect::<Result<_>>()?;
    let pick = |ds: &Dataset| -> Result<(Dataset, Vec<usize>)> {
        let labels = ds.labels().expect("prepare checked labels");
        let idx: Vec<usize> = (0..ds.len())
            .filter(|&i| map.contains(&(labels[i] as usize)))
            .collect();
        let relabel = idx
            .iter()
            .map(|&i| map.iter().position(|&m| m == labels[i] as usize).unwrap() as u32)
            .collect();
        Ok((ds.subset(&idx).relabel(relabel, classes.to_vec())?, idx))
    };
    let (train, index) = pick(&prep.pair.train)?;
    let (test, _) = pick(&prep.pair.test)?;
    let pair = DatasetPair::new(
        format!("{}[{}]", prep.pair.name, classes.join(",")),
        train,
        test,
    )?;
    if keep_all {
        return Ok(Prepared {
            pair,
            norm: prep.norm,
            all_classes: Some(AllClasses {
                name: prep.pair.name,
                train: prep.pair.train,
                index,
            }),
            skipped_images: prep.skipped_images,
        });
    }
    Ok(Prepared::fitted(pair, prep.skipped_images))
}

/// The pretraining pool: training images outside the labeled split (for
/// the largest K) of every seed in `exclude_seeds`, capped at `cap` by a
/// draw seeded with `seed`. No label is read except to build those splits.
pub fn unlabeled_pool(
    train: &Dataset,
    max_k: usize,
    exclude_seeds: &[u64],
    seed: u64,
    cap: Option<usize>,
) -> Result<Vec<usize>> {
    let labels = train
        .labels()
        .ok_or_else(|| Error::invalid("dataset", "no labels"))?;
    capped_pool(labels, None, train.len(), max_k, exclude_seeds, seed, cap)
}

/// The images of a set of `len` that are outside the labeled split (for
/// `max_k`) of every seed in `exclude_seeds`, capped at `cap` by a draw
/// seeded with `seed`, sorted. The splits are drawn from `labels`; `index`
/// maps their positions into the set (identity when `None`).
fn capped_pool(
    labels: &[u32],
    index: Option<&[usize]>,
    len: usize,
    max_k: usize,
    exclude_seeds: &[u64],
    seed: u64,
    cap: Option<usize>,
) -> Result<Vec<usize>> {
    let mut labeled = vec![false; len];
    for &s in exclude_seeds {
        for i in split::stratified(labels, max_k, s)?.labeled {
            labeled[index.map_or(i, |m| m[i])] = true;
        }
    }
    let mut pool: Vec<usize> = (0..len).filter(|&i| !labeled[i]).collect();
    if let Some(cap) = cap.filter(|&c| c < pool.len()) {
        pool.shuffle(&mut rng::stream(seed, "pool"));
        pool.truncate(cap);
        pool.sort_unstable();
    }
    Ok(pool)
}

/// The images pretraining draws from and the pool's indices into them.
/// Without [`Prepared::all_classes`] this is [`unlabeled_pool`] of the
/// training set; with it, every training image of every class except the
/// labeled splits (of the selected classes, for each seed in
/// `exclude_seeds`), capped the same way.
pub fn pretrain_pool<'a>(
    prep: &'a Prepared,
    max_k: usize,
    exclude_seeds: &[u64],
    seed: u64,
    cap: Option<usize>,
) -> Result<(&'a Dataset, Vec<usize>)> {
    let Some(all) = &prep.all_classes else {
        let train = &prep.pair.train;
        return Ok((
            train,
            unlabeled_pool(train, max_k, exclude_seeds, seed, cap)?,
        ));
    };
    let labels = prep
        .pair
        .train
        .labels()
        .expect("prepared datasets have labels");
    let pool = capped_pool(
        labels,
        Some(&all.index),
        all.train.len(),
        max_k,
        exclude_seeds,
        seed,
        cap,
    )?;
    Ok((&all.train, pool))
}
