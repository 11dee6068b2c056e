//! Resolving a spec in layers: the defaults, a preset, a TOML file, flags
//! and `--set path=value`, each laid over the one before. Every layer is a
//! TOML table merged key by key (arrays and values replace, tables merge);
//! the result is read into an [`Experiment`] with unknown keys refused by
//! their path, then validated.

use super::{Experiment, Recipe};
use crate::core::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use toml::{Table, Value};

/// The presets shipped in `configs/presets/`, compiled in so that a binary
/// works from any directory: (name, TOML text).
pub const PRESETS: [(&str, &str); 2] = [
    (
        "svhn-street-numbers",
        include_str!("../../configs/presets/svhn-street-numbers.toml"),
    ),
    (
        "tiny-imagenet-duck-fish",
        include_str!("../../configs/presets/tiny-imagenet-duck-fish.toml"),
    ),
];

/// A spec being assembled from layers.
#[derive(Debug, Clone)]
pub struct Layers {
    table: Table,
    /// The preset applied: its name, the path of its dataset key, and the
    /// dataset it was written for.
    preset: Option<(String, String, String)>,
}

impl Default for Layers {
    fn default() -> Self {
        Self::from_experiment(&Experiment::default())
    }
}

/// Reads a spec out of a TOML table; errors name the path of the key at
/// fault.
fn read<T: DeserializeOwned>(table: &Table) -> std::result::Result<T, String> {
    serde_path_to_error::deserialize(Value::Table(table.clone())).map_err(|e| {
        let inner = e.inner().to_string();
        let msg = inner.lines().next().unwrap_or_default().to_string();
        match e.path().to_string() {
            p if p == "." => msg,
            p => format!("{p}: {msg}"),
        }
    })
}

/// `over` merged into `base`: tables merge key by key, anything else
/// replaces. A `backbone` table naming another backbone replaces the whole
/// `backbone` table, since each backbone has its own keys.
fn merge(base: &mut Table, over: &Table, at_root: bool) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => {
                let other_backbone = at_root
                    && k == "backbone"
                    && o.get("name").is_some_and(|n| b.get("name") != Some(n));
                if other_backbone {
                    base.insert(k.clone(), v.clone());
                } else {
                    merge(b, o, false);
                }
            }
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The value of a `--set` right-hand side: a TOML value (`3`, `0.5`,
/// `true`, `[1, 2]`, `"text"`), or the text itself as a string.
pub fn parse_value(text: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_string()))
}

impl Layers {
    /// Starts from a whole spec.
    pub fn from_experiment(e: &Experiment) -> Self {
        Self::from_spec(e)
    }

    /// Starts from any spec type that serialises to a TOML table.
    pub fn from_spec<T: Serialize>(spec: &T) -> Self {
        let table = Table::try_from(spec).expect("a spec serialises to a TOML table");
        Self {
            table,
            preset: None,
        }
    }

    /// Starts from a legacy flat recipe file (`--recipe`) over the defaults.
    pub fn from_recipe_file(path: &Path) -> Result<Self> {
        let e = Recipe::from_file(path)?.into_experiment(Experiment::default());
        Ok(Self::from_experiment(&e))
    }

    /// Lays the pipeline preset `name` over the spec.
    pub fn preset(&mut self, name: &str) -> Result<()> {
        self.preset_from(&PRESETS, name, "data.dataset")
    }

    /// Lays the preset `name` of `presets` over the spec; the value at
    /// `dataset_path` (which every preset sets) must then stay as the
    /// preset has it.
    pub fn preset_from(
        &mut self,
        presets: &[(&str, &str)],
        name: &str,
        dataset_path: &str,
    ) -> Result<()> {
        let Some((_, text)) = presets.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = presets.iter().map(|(n, _)| *n).collect();
            return Err(Error::invalid(
                "--preset",
                format!("unknown preset {name:?}; available: {}", names.join(", ")),
            ));
        };
        let over: Table = toml::from_str(text).expect("shipped presets parse");
        let mut next = self.table.clone();
        merge(&mut next, &over, true);
        self.table = next;
        let dataset = self
            .get(dataset_path)
            .and_then(Value::as_str)
            .expect("every preset names its dataset")
            .to_string();
        self.preset = Some((name.into(), dataset_path.into(), dataset));
        Ok(())
    }

    /// Lays a TOML file over the spec; errors name the file.
    pub fn file(&mut self, path: &Path) -> Result<()> {
        self.file_as::<Experiment>(path)
    }

    /// Lays a TOML file over a spec of type `T`; errors (unreadable file,
    /// bad TOML, unknown keys, wrong types) name the file.
    pub fn file_as<T: DeserializeOwned>(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            msg: format!("cannot read: {e}"),
        })?;
        self.text_as::<T>(path, &text)
    }

    /// Lays TOML `text` (the content of `path`, which errors name) over a
    /// spec of type `T`, as [`Layers::file_as`] does with a file.
    pub fn text_as<T: DeserializeOwned>(&mut self, path: &Path, text: &str) -> Result<()> {
        let bad = |msg: String| Error::Format {
            path: path.to_path_buf(),
            msg,
        };
        let over: Table =
            toml::from_str(text).map_err(|e| bad(e.to_string().trim().to_string()))?;
        let mut next = self.table.clone();
        merge(&mut next, &over, true);
        read::<T>(&next).map_err(bad)?;
        self.table = next;
        Ok(())
    }

    /// Sets the value at a dotted spec path (`transfer.epochs`), creating
    /// tables on the way; the key is checked when the spec is resolved.
    pub fn set(&mut self, path: &str, value: Value) -> Result<()> {
        let keys: Vec<&str> = path.split('.').collect();
        if keys.iter().any(|k| k.is_empty()) {
            return Err(Error::invalid(
                path,
                "not a spec path (expected e.g. transfer.epochs)",
            ));
        }
        let mut over = Table::new();
        let mut at = &mut over;
        for k in &keys[..keys.len() - 1] {
            at = at
                .entry(k.to_string())
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .expect("just inserted a table");
        }
        at.insert(keys[keys.len() - 1].to_string(), value);
        merge(&mut self.table, &over, true);
        Ok(())
    }

    /// `--set path=value`.
    pub fn assign(&mut self, assignment: &str) -> Result<()> {
        let Some((path, value)) = assignment.split_once('=') else {
            return Err(Error::invalid(
                "--set",
                format!("{assignment:?} is not PATH=VALUE (e.g. transfer.epochs=30)"),
            ));
        };
        self.set(path.trim(), parse_value(value.trim()))
    }

    /// The current value at a dotted path, if any.
    pub fn get(&self, path: &str) -> Option<&Value> {
        let mut keys = path.split('.');
        let mut at = self.table.get(keys.next()?)?;
        for k in keys {
            at = at.get(k)?;
        }
        Some(at)
    }

    /// Reads the layers as a `T`, checking the preset's dataset.
    pub fn read<T: DeserializeOwned>(&self) -> Result<T> {
        let spec = read(&self.table).map_err(|msg| match msg.split_once(": ") {
            Some((path, m)) => Error::invalid(path, m),
            None => Error::invalid("spec", msg),
        })?;
        if let Some((name, path, dataset)) = &self.preset {
            let now = self.get(path).and_then(Value::as_str).unwrap_or_default();
            if now != dataset {
                return Err(Error::invalid(
                    path.as_str(),
                    format!(
                        "the preset {name} is for the dataset {dataset}, not {now}; drop --preset to use another dataset"
                    ),
                ));
            }
        }
        Ok(spec)
    }

    /// The experiment: read, validated, and checked against the preset's
    /// dataset.
    pub fn resolve(&self) -> Result<Experiment> {
        let e: Experiment = self.read()?;
        e.validate()?;
        Ok(e)
    }
}

impl Experiment {
    /// The spec as TOML text (what `experiment.toml` holds).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a spec serialises to TOML")
    }

    /// Reads a whole spec from a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut l = Layers::default();
        l.file(path)?;
        l.resolve()
    }

    /// Reads a whole spec from TOML text (the content of `path`, which
    /// errors name) over the defaults.
    pub fn from_text(path: &Path, text: &str) -> Result<Self> {
        let mut l = Layers::default();
        l.text_as::<Experiment>(path, text)?;
        l.resolve()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<Experiment>) -> String {
        r.expect_err("must fail").to_string()
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("run.toml");
        std::fs::write(
            &f,
            "[transfer]\nepochs = 5\n[transfer.linear_probe]\nstepz = 3\n",
        )
        .unwrap();
        let mut l = Layers::default();
        let e = l.file(&f).unwrap_err().to_string();
        assert!(
            e.contains("run.toml") && e.contains("transfer.linear_probe.stepz"),
            "{e}"
        );
        let mut l = Layers::default();
        l.set("methods.dino.epochs", Value::Integer(3)).unwrap();
        let e = err(l.resolve());
        assert!(e.contains("methods.dino") && e.contains("simclr"), "{e}");
        let mut l = Layers::default();
        l.set("backbone.width", Value::Integer(3)).unwrap();
        let e = err(l.resolve());
        assert!(
            e.contains("backbone") && e.contains("unknown field `width`"),
            "{e}"
        );
    }

    #[test]
    fn validation_names_the_spec_path() {
        let mut l = Layers::default();
        l.assign("transfer.epochs=0").unwrap();
        assert!(err(l.resolve()).contains("transfer.epochs: must be at least 1"));
        let mut l = Layers::default();
        l.assign("data.max_test=0").unwrap();
        assert!(err(l.resolve()).contains("data.max_test: must be at least 1"));
        let mut l = Layers::default();
        l.assign("protocols.run=[\"finetune\", \"probe\"]").unwrap();
        let e = err(l.resolve());
        assert!(e.contains("protocols.run") && e.contains("probe"), "{e}");
        for (set, path) in [
            (
                "protocols.knn.weighting=\"gaussian\"",
                "protocols.knn.weighting",
            ),
            ("protocols.knn.temperature=0.0", "protocols.knn.temperature"),
        ] {
            let mut l = Layers::default();
            l.assign(set).unwrap();
            let e = err(l.resolve());
            assert!(e.contains(path), "{e}");
        }
        let mut l = Layers::default();
        l.assign("protocols.knn.weighting=\"temperature\"").unwrap();
        let w = l.resolve().unwrap().protocols.knn.weighting();
        assert_eq!(w, crate::finetune::Weighting::Temperature(0.1));
    }

    #[test]
    fn set_reaches_nested_fields_and_parses_values() {
        let mut l = Layers::default();
        l.assign("methods.simclr.projector.dim=32").unwrap();
        l.assign("transfer.linear_probe.lr = 0.5").unwrap();
        l.assign("data.dataset=cifar10").unwrap();
        l.assign("split.seeds=[4, 5]").unwrap();
        l.assign("transfer.augment=flip-zoom-contrast").unwrap();
        let e = l.resolve().unwrap();
        assert_eq!(e.methods.simclr.projector.dim, 32);
        assert_eq!(e.transfer.linear_probe.lr, 0.5);
        assert_eq!(e.data.dataset, "cifar10");
        assert_eq!(e.split.seeds, vec![4, 5]);
        assert_eq!(
            e.transfer.augment,
            super::super::ViewAugment::Preset("flip-zoom-contrast".into())
        );
        assert!(l.clone().assign("no-equals-sign").is_err());
        assert!(l.set("a..b", Value::Integer(1)).is_err());
    }

    #[test]
    fn another_backbone_name_starts_from_its_defaults() {
        let mut l = Layers::default();
        l.set("backbone.widths", Value::Array(vec![Value::Integer(8)]))
            .unwrap();
        l.set("backbone.name", Value::String("resnet18".into()))
            .unwrap();
        l.set("backbone.width", Value::Integer(16)).unwrap();
        let e = l.resolve().unwrap();
        assert_eq!(e.backbone.name(), "resnet18");
        assert_eq!(e.backbone.config(3).name(), "resnet18");
        assert_eq!(
            e.backbone_config(3),
            crate::backbones::BackboneConfig::ResNet18 {
                in_channels: 3,
                base_width: 16
            }
        );
    }

    #[test]
    fn presets_load_and_a_contradicting_dataset_is_refused() {
        let mut l = Layers::default();
        l.preset("tiny-imagenet-duck-fish").unwrap();
        let e = l.resolve().unwrap();
        assert_eq!(e.data.dataset, "tiny-imagenet");
        assert_eq!(e.backbone.name(), "mobilenetv2");
        assert_eq!(e.split.labels_per_class, vec![500, 50]);
        assert_eq!(e.transfer.patience, 5);
        l.set("data.dataset", Value::String("fashion-mnist".into()))
            .unwrap();
        let msg = err(l.resolve());
        assert!(
            msg.contains("tiny-imagenet-duck-fish") && msg.contains("fashion-mnist"),
            "{msg}"
        );
        // Other settings still override the preset.
        let mut l = Layers::default();
        l.preset("svhn-street-numbers").unwrap();
        l.set("backbone.name", Value::String("convnet".into()))
            .unwrap();
        assert_eq!(l.resolve().unwrap().backbone.name(), "convnet");
        assert!(Layers::default().preset("imagenet-in-an-hour").is_err());
    }

    #[test]
    fn the_legacy_recipe_maps_onto_the_spec_and_back() {
        assert_eq!(
            Recipe::default().into_experiment(Experiment::default()),
            Experiment::default()
        );
        assert_eq!(
            Recipe::from(&Experiment::default()),
            Recipe {
                transfer_augment: Some(super::super::ViewAugment::Preset("crop-flip".into())),
                distill_augment: Some(super::super::ViewAugment::auto()),
                fixmatch_augment: Some(super::super::ViewAugment::auto()),
                ..Recipe::default()
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.json");
        std::fs::write(&f, r#"{"transfer_epochs": 7, "lpft": false, "distill_epochs": 3, "siamese": {"temperature": 0.5}}"#).unwrap();
        let e = Layers::from_recipe_file(&f).unwrap().resolve().unwrap();
        assert_eq!(e.transfer.epochs, 7);
        assert_eq!(e.protocols.run, ["finetune", "distill", "linear", "knn"]);
        assert_eq!(e.protocols.distill.epochs, 3);
        assert_eq!(e.methods.simclr.temperature, 0.5);
    }

    #[test]
    fn mangled_spec_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let valid = Experiment::default().to_toml().into_bytes();
        let f = dir.path().join("run.toml");
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..400 {
            let mut b = valid.clone();
            for _ in 0..1 + next() % 6 {
                let at = (next() % b.len() as u64) as usize;
                b[at] = next() as u8;
            }
            b.truncate(b.len() - (next() % 40) as usize);
            std::fs::write(&f, &b).unwrap();
            let mut l = Layers::default();
            if l.file(&f).is_ok() {
                let _ = l.resolve();
            }
        }
    }

    #[test]
    fn the_shipped_default_config_is_the_default_spec() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/default.toml");
        if std::env::var_os("SELFSUP_BLESS").is_some() {
            let head =
                "# The default experiment: what `cargo xtask pipeline` runs without flags.\n\
                        # Generated from `Experiment::default()`; a test keeps the two equal.\n\n";
            std::fs::write(&path, format!("{head}{}", Experiment::default().to_toml())).unwrap();
        }
        assert_eq!(Experiment::from_file(&path).unwrap(), Experiment::default());
        let text = std::fs::read_to_string(&path).unwrap();
        let table: Table = toml::from_str(&text).unwrap();
        assert_eq!(
            table,
            Table::try_from(Experiment::default()).unwrap(),
            "every key is written out"
        );
    }
}
