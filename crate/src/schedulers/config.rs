//! `scheduler/scheduler_config.json`, read the way diffusers' `from_config` reads it: each scheduler
//! takes the fields it knows, with its own class defaults for the fields the file lacks.

use serde_json::{Map, Value};

use super::SchedulerError;

/// A diffusers scheduler config. Unknown fields are kept (another scheduler may use them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerConfig {
    fields: Map<String, Value>,
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

/// How inference timesteps are spread over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Linspace,
    Trailing,
}

impl SchedulerConfig {
    /// Parses the JSON text of a `scheduler_config.json`. Keys listed in `_use_default_values` (present
    /// in configs dumped from memory) are dropped, as `from_config` does.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let mut fields: Map<String, Value> = serde_json::from_str(&quote_non_finite(text))?;
        if let Some(Value::Array(defaults)) = fields.remove("_use_default_values") {
            for key in defaults.iter().filter_map(Value::as_str) {
                fields.remove(key);
            }
        }
        Ok(Self { fields })
    }

    /// The file this config is read from.
    pub const FILE: &'static str = "scheduler/scheduler_config.json";

    /// Bounds and checks the numbers every scheduler builds its tables from, before any is built: the
    /// training timesteps (at most [`crate::config::MAX_TRAIN_TIMESTEPS`]), betas in (0, 1) with
    /// `beta_start <= beta_end`, one trained beta per timestep, `steps_offset` inside the timesteps and
    /// positive finite scales. Only the fields the file gives are checked (each scheduler's defaults are
    /// valid); values a scheduler does not implement are its constructor's to refuse.
    pub fn check(&self) -> Result<(), SchedulerError> {
        use crate::config::MAX_TRAIN_TIMESTEPS;
        let bad =
            |field: &'static str, value: String, problem: String| SchedulerError::BadValue { field, value, problem };
        let train_steps = self.usize_or("num_train_timesteps", 1000)?;
        if !(1..=MAX_TRAIN_TIMESTEPS).contains(&train_steps) {
            let problem = format!("is out of range (expected 1 to {MAX_TRAIN_TIMESTEPS})");
            return Err(bad("num_train_timesteps", train_steps.to_string(), problem));
        }
        let beta = |key: &'static str| -> Result<Option<f64>, SchedulerError> {
            let Some(value) = self.present(key) else { return Ok(None) };
            let b = number(value).ok_or_else(|| Self::bad(key, "a number"))?;
            if !(b > 0.0 && b < 1.0) {
                return Err(bad(key, b.to_string(), "is out of range (expected above 0 and below 1)".into()));
            }
            Ok(Some(b))
        };
        if let (Some(start), Some(end)) = (beta("beta_start")?, beta("beta_end")?)
            && start > end
        {
            return Err(bad("beta_start", start.to_string(), format!("is above beta_end {end}")));
        }
        if let Some(betas) = self.trained_betas()? {
            if betas.len() != train_steps {
                let problem = format!("for {train_steps} training timesteps (one per timestep expected)");
                return Err(bad("trained_betas", format!("has {} betas", betas.len()), problem));
            }
            if let Some((i, b)) = betas.iter().enumerate().find(|(_, b)| !(**b > 0.0 && **b < 1.0)) {
                let problem = format!("(entry {i}) is out of range (expected above 0 and below 1)");
                return Err(bad("trained_betas", b.to_string(), problem));
            }
        }
        let offset = self.usize_or("steps_offset", 0)?;
        if offset >= train_steps {
            let problem = format!("is not below num_train_timesteps {train_steps}");
            return Err(bad("steps_offset", offset.to_string(), problem));
        }
        if self.present("original_inference_steps").is_some() {
            let steps = self.usize_or("original_inference_steps", 50)?;
            if !(1..=train_steps).contains(&steps) {
                let problem = format!("is out of range (expected 1 to num_train_timesteps {train_steps})");
                return Err(bad("original_inference_steps", steps.to_string(), problem));
            }
        }
        for key in ["clip_sample_range", "timestep_scaling"] {
            let value = self.f64_or(key, 1.0)?;
            if !(value.is_finite() && value > 0.0) {
                return Err(bad(key, value.to_string(), "must be a positive number".into()));
            }
        }
        if self.f64_or("lambda_min_clipped", f64::NEG_INFINITY)?.is_nan() {
            return Err(bad("lambda_min_clipped", "NaN".into(), "must be a number".into()));
        }
        Ok(())
    }

    /// Builds a config from key/value pairs (tests, programmatic use).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        Self { fields: pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }
    }

    /// The diffusers class this config was saved from (`_class_name`), if any.
    pub fn class_name(&self) -> Option<&str> {
        self.fields.get("_class_name").and_then(Value::as_str)
    }

    /// A copy with `key` set (how `--scheduler dpmpp-2m-karras` turns on Karras sigmas).
    pub fn with(&self, key: &str, value: Value) -> Self {
        let mut fields = self.fields.clone();
        fields.insert(key.to_string(), value);
        Self { fields }
    }

    /// A string field as the file gives it (`None` when absent, `null` or not a string).
    pub fn str_value(&self, key: &str) -> Option<&str> {
        self.present(key).and_then(Value::as_str)
    }

    fn present(&self, key: &str) -> Option<&Value> {
        self.fields.get(key).filter(|v| !v.is_null())
    }

    fn bad(key: &str, expected: &'static str) -> SchedulerError {
        SchedulerError::BadField { field: key.to_string(), expected }
    }

    pub(crate) fn f64_or(&self, key: &str, default: f64) -> Result<f64, SchedulerError> {
        self.present(key).map_or(Ok(default), |v| number(v).ok_or_else(|| Self::bad(key, "a number")))
    }

    pub(crate) fn usize_or(&self, key: &str, default: usize) -> Result<usize, SchedulerError> {
        self.present(key).map_or(Ok(default), |v| {
            v.as_u64().map(|n| n as usize).ok_or_else(|| Self::bad(key, "a non-negative integer"))
        })
    }

    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool, SchedulerError> {
        self.present(key).map_or(Ok(default), |v| v.as_bool().ok_or_else(|| Self::bad(key, "true or false")))
    }

    pub(crate) fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str, SchedulerError> {
        self.present(key).map_or(Ok(default), |v| v.as_str().ok_or_else(|| Self::bad(key, "a string")))
    }

    /// `trained_betas`, when the config gives them explicitly.
    pub(crate) fn trained_betas(&self) -> Result<Option<Vec<f64>>, SchedulerError> {
        let Some(value) = self.present("trained_betas") else { return Ok(None) };
        let list = value.as_array().ok_or_else(|| Self::bad("trained_betas", "a list of numbers"))?;
        list.iter()
            .map(|v| v.as_f64().ok_or_else(|| Self::bad("trained_betas", "a list of numbers")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub(crate) fn prediction_type(&self, default: &str) -> Result<PredictionType, SchedulerError> {
        match self.str_or("prediction_type", default)? {
            "epsilon" => Ok(PredictionType::Epsilon),
            "v_prediction" => Ok(PredictionType::VPrediction),
            "sample" => Ok(PredictionType::Sample),
            other => Err(SchedulerError::Unsupported {
                field: "prediction_type",
                value: other.to_string(),
                hint: " (expected epsilon, v_prediction or sample)".into(),
            }),
        }
    }

    pub(crate) fn timestep_spacing(&self, default: &str) -> Result<TimestepSpacing, SchedulerError> {
        match self.str_or("timestep_spacing", default)? {
            "leading" => Ok(TimestepSpacing::Leading),
            "linspace" => Ok(TimestepSpacing::Linspace),
            "trailing" => Ok(TimestepSpacing::Trailing),
            other => Err(SchedulerError::Unsupported {
                field: "timestep_spacing",
                value: other.to_string(),
                hint: " (expected leading, linspace or trailing)".into(),
            }),
        }
    }
}

/// A JSON number, or one of the non-finite values Python's json module writes (see [`quote_non_finite`]).
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::String(s) if s == "Infinity" => Some(f64::INFINITY),
        Value::String(s) if s == "-Infinity" => Some(f64::NEG_INFINITY),
        Value::String(s) if s == "NaN" => Some(f64::NAN),
        other => other.as_f64(),
    }
}

/// Python's json module writes `-Infinity` (diffusers' `lambda_min_clipped` default), `Infinity` and
/// `NaN`, which are not JSON: quote them outside strings so serde_json can read the file.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|t| rest.starts_with(t)) {
            out.push('"');
            out.push_str(token);
            out.push('"');
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}
