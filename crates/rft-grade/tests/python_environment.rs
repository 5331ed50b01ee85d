//! The real grader environment (`rft setup python`): OpenAI's packages import and work inside
//! the sandbox. CI builds the environment first and sets `RFT_SLOW_TESTS=1`, which makes a
//! missing environment a failure; elsewhere the test checks only that the error names the fix.

use rft_grade::python::{PythonConfig, PythonRuntime};
use rft_grade::{compile_with, GraderContext};
use rft_types::{Grader, Sample};
use serde_json::json;

const EVERY_PACKAGE: &str = r#"
import numpy, scipy.optimize, sympy, pandas, rapidfuzz.fuzz, sklearn.metrics, rouge_score.rouge_scorer
import deepdiff, jsonschema, pydantic, yaml, nltk, sqlparse
from nltk.corpus import wordnet

def grade(sample, item):
    expected = item["expected"]
    got = sample["output_json"]
    checks = [
        float(numpy.mean([1.0, 3.0])) == 2.0,
        abs(scipy.optimize.brentq(lambda x: x * x - 2, 0, 2) - 2 ** 0.5) < 1e-9,
        sympy.simplify("x + x") == sympy.Symbol("x") * 2,
        pandas.DataFrame({"a": [1, 2]})["a"].sum() == 3,
        rapidfuzz.fuzz.ratio("abc", "abc") == 100,
        sklearn.metrics.f1_score([1, 0], [1, 0]) == 1.0,
        not deepdiff.DeepDiff(got, expected),
        jsonschema.Draft7Validator({"type": "object"}).is_valid(got),
        yaml.safe_load("a: 1") == {"a": 1},
        len(sqlparse.split("select 1; select 2")) == 2,
        len(wordnet.synsets("dog")) > 0,
    ]
    return sum(checks) / len(checks)
"#;

#[test]
fn grader_image_packages_work_in_the_sandbox() {
    let mut config = PythonConfig::from_env();
    config.interpreter = None;
    let runtime = PythonRuntime::new(config);
    let grader = Grader::from_value(
        &json!({"type": "python", "name": "image", "source": EVERY_PACKAGE,
                                            "image_tag": "2025-05-08"}),
    )
    .unwrap();
    let context = GraderContext {
        python: runtime,
        ..GraderContext::shared()
    };
    let compiled = match compile_with(&grader, &context) {
        Ok(compiled) => compiled,
        Err(err) => {
            let message = err.to_string();
            assert!(message.contains("rft setup python"), "{message}");
            assert!(
                std::env::var("RFT_SLOW_TESTS").as_deref() != Ok("1"),
                "RFT_SLOW_TESTS=1 requires the grader environment: {message}"
            );
            return;
        }
    };
    let result = compiled.grade(
        &Sample::from_text(r#"{"total": 12}"#),
        &json!({"expected": {"total": 12}}),
    );
    assert_eq!(result.reward, 1.0, "{:?}", result.metadata.errors);
}
