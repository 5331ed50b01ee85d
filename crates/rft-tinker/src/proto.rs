//! The protobuf messages of Tinker's public wire format (`tinker_public.proto`, as the SDK's
//! `tinker/proto/tinker_public_pb2.py` describes it), written as `prost` derive structs with the
//! same field numbers: no `protoc`, no build script. Only the messages the server reads
//! (`ForwardBackwardRequest`) or writes (`ForwardBackwardOutput`, `SampleResponse`) are here;
//! image and audio chunks decode (so a request carrying one gets a clear refusal) but are not
//! served.

use std::collections::HashMap;

/// `tinker_public.DType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DType {
    /// Not set.
    Unspecified = 0,
    /// Little-endian f32.
    Float32 = 1,
    /// Little-endian i64.
    Int64 = 2,
    /// Little-endian i32.
    Int32 = 3,
    /// bfloat16 (the upper half of an f32).
    Bfloat16 = 4,
}

/// `tinker_public.StopReason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum StopReason {
    /// A stop token or string.
    Stop = 0,
    /// `max_tokens`.
    Length = 1,
}

/// `tinker_public.SparseCsr`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SparseCsr {
    #[prost(bytes = "vec", tag = "1")]
    pub values: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub crow_indices: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub col_indices: Vec<u8>,
}

/// `tinker_public.Tensor.encoding`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Encoding {
    #[prost(bytes, tag = "1")]
    Dense(Vec<u8>),
    #[prost(message, tag = "2")]
    SparseCsr(SparseCsr),
}

/// `tinker_public.Tensor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Tensor {
    #[prost(oneof = "Encoding", tags = "1, 2")]
    pub encoding: Option<Encoding>,
    #[prost(enumeration = "DType", tag = "3")]
    pub dtype: i32,
    #[prost(int64, repeated, tag = "4")]
    pub shape: Vec<i64>,
}

/// `tinker_public.BatchedTensor`: every datum's values back to back, `offsets` (i64 byte
/// offsets, one more than datums) saying where each starts.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchedTensor {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub offsets: Vec<u8>,
    #[prost(enumeration = "DType", tag = "3")]
    pub dtype: i32,
    #[prost(int64, repeated, tag = "4")]
    pub trailing_shape: Vec<i64>,
}

/// `tinker_public.ArrayRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArrayRecord {
    #[prost(string, tag = "1")]
    pub type_tag: String,
    #[prost(map = "string, message", tag = "2")]
    pub fields: HashMap<String, BatchedTensor>,
    #[prost(int64, tag = "3")]
    pub num_datums: i64,
}

/// `tinker_public.ForwardBackwardOutput`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardBackwardOutput {
    #[prost(string, tag = "1")]
    pub loss_fn_output_type: String,
    #[prost(message, repeated, tag = "2")]
    pub loss_fn_outputs: Vec<ArrayRecord>,
    #[prost(map = "string, double", tag = "3")]
    pub metrics: HashMap<String, f64>,
}

/// `tinker_public.LossConfigValue.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum LossConfigKind {
    #[prost(double, tag = "1")]
    Number(f64),
    #[prost(string, tag = "2")]
    Text(String),
}

/// `tinker_public.LossConfigValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LossConfigValue {
    #[prost(oneof = "LossConfigKind", tags = "1, 2")]
    pub value: Option<LossConfigKind>,
}

/// `tinker_public.ForwardBackwardRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardBackwardRequest {
    #[prost(string, tag = "1")]
    pub model_id: String,
    #[prost(int32, tag = "2")]
    pub seq_id: i32,
    #[prost(message, repeated, tag = "3")]
    pub data: Vec<Datum>,
    #[prost(string, tag = "4")]
    pub loss_fn: String,
    #[prost(map = "string, double", tag = "5")]
    pub loss_fn_config: HashMap<String, f64>,
    #[prost(bool, tag = "6")]
    pub forward_only: bool,
    #[prost(map = "string, message", tag = "7")]
    pub loss_fn_config_v2: HashMap<String, LossConfigValue>,
}

/// `tinker_public.Datum`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Datum {
    #[prost(message, repeated, tag = "1")]
    pub model_input: Vec<Chunk>,
    #[prost(map = "string, message", tag = "2")]
    pub loss_fn_inputs: HashMap<String, Tensor>,
    #[prost(message, repeated, tag = "3")]
    pub model_input_spans: Vec<ProvenanceSpan>,
    #[prost(message, repeated, tag = "4")]
    pub loss_fn_input_spans: Vec<ProvenanceSpan>,
}

/// `tinker_public.PromptProvenanceSpan` and `SampledProvenanceSpan` (same fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SpanRef {
    #[prost(string, tag = "1")]
    pub sequence_id: String,
    #[prost(int64, tag = "2")]
    pub offset: i64,
    #[prost(int64, tag = "3")]
    pub length: i64,
}

/// `tinker_public.ProvenanceSpan.span`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Span {
    #[prost(message, tag = "1")]
    PromptTokens(SpanRef),
    #[prost(message, tag = "2")]
    SampledTokens(SpanRef),
}

/// `tinker_public.ProvenanceSpan`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProvenanceSpan {
    #[prost(oneof = "Span", tags = "1, 2")]
    pub span: Option<Span>,
}

/// `tinker_public.EncodedTextChunk`: tokens as little-endian i32.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncodedTextChunk {
    #[prost(bytes = "vec", tag = "1")]
    pub tokens: Vec<u8>,
}

/// `tinker_public.ImageChunk` (decoded only to be refused).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageChunk {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    #[prost(string, tag = "2")]
    pub format: String,
}

/// `tinker_public.DmelChunk` (decoded only to be refused).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DmelChunk {
    #[prost(bytes = "vec", tag = "1")]
    pub dmel: Vec<u8>,
}

/// `tinker_public.Chunk.chunk`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ChunkKind {
    #[prost(message, tag = "1")]
    EncodedText(EncodedTextChunk),
    #[prost(message, tag = "2")]
    Image(ImageChunk),
    #[prost(message, tag = "3")]
    Dmel(DmelChunk),
}

/// `tinker_public.Chunk`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Chunk {
    #[prost(oneof = "ChunkKind", tags = "1, 2, 3")]
    pub chunk: Option<ChunkKind>,
}

/// `tinker_public.SampledSequence`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SampledSequence {
    #[prost(enumeration = "StopReason", tag = "1")]
    pub stop_reason: i32,
    /// Little-endian i32 token ids.
    #[prost(bytes = "vec", tag = "2")]
    pub tokens: Vec<u8>,
    /// Little-endian f32 log-probs.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub logprobs: Option<Vec<u8>>,
}

/// `tinker_public.SampleResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SampleResponse {
    #[prost(message, repeated, tag = "1")]
    pub sequences: Vec<SampledSequence>,
    /// Little-endian f32, one per prompt token (NaN for the first).
    #[prost(bytes = "vec", optional, tag = "2")]
    pub prompt_logprobs: Option<Vec<u8>>,
    #[prost(int32, tag = "4")]
    pub prompt_cache_hit_tokens: i32,
}

/// Little-endian bytes of f32 values.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian bytes of token ids as i32 (ids are below 2³¹: vocabularies are far smaller).
pub fn i32_bytes(values: &[u32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| i32::try_from(v).unwrap_or(i32::MAX).to_le_bytes())
        .collect()
}

/// Little-endian bytes of i64 values.
pub fn i64_bytes(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A datum's tokens from its chunks: text chunks only.
pub fn tokens_of(chunks: &[Chunk]) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for chunk in chunks {
        match &chunk.chunk {
            Some(ChunkKind::EncodedText(text)) => {
                if !text.tokens.len().is_multiple_of(4) {
                    return Err("an encoded_text chunk's tokens are not whole i32 values".into());
                }
                for word in text.tokens.chunks_exact(4) {
                    let id = i32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                    out.push(u32::try_from(id).map_err(|_| format!("token id {id} is negative"))?);
                }
            }
            Some(ChunkKind::Image(_)) | Some(ChunkKind::Dmel(_)) => {
                return Err(
                    "image and audio chunks are not supported: OpenRFT serves text models".into(),
                );
            }
            None => return Err("a model_input chunk is empty".into()),
        }
    }
    Ok(out)
}

/// A loss input tensor's values as f64, dense or sparse CSR (`pad` where CSR lists nothing),
/// with its element count checked against its shape and against `expected` (the datum's
/// token count) before anything is allocated: a sparse tensor's shape is the client's word,
/// and densifying a `[1, 2^33]` one would take 64 GiB.
pub fn tensor_values(tensor: &Tensor, pad: f64, expected: usize) -> Result<Vec<f64>, String> {
    let dtype = DType::try_from(tensor.dtype).unwrap_or(DType::Unspecified);
    let decode = |bytes: &[u8]| -> Result<Vec<f64>, String> {
        match dtype {
            DType::Float32 => whole(bytes, 4).map(|_| {
                bytes
                    .chunks_exact(4)
                    .map(|w| f64::from(f32::from_le_bytes([w[0], w[1], w[2], w[3]])))
                    .collect()
            }),
            DType::Int64 => whole(bytes, 8).map(|_| {
                bytes
                    .chunks_exact(8)
                    .map(|w| {
                        i64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) as f64
                    })
                    .collect()
            }),
            DType::Int32 => whole(bytes, 4).map(|_| {
                bytes
                    .chunks_exact(4)
                    .map(|w| f64::from(i32::from_le_bytes([w[0], w[1], w[2], w[3]])))
                    .collect()
            }),
            DType::Bfloat16 | DType::Unspecified => {
                Err("tensors must be float32, int64 or int32".into())
            }
        }
    };
    let numel = tensor
        .shape
        .iter()
        .try_fold(1usize, |n, &d| {
            usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
        })
        .ok_or("a tensor's shape is negative or too large")?;
    if !tensor.shape.is_empty() && numel != expected {
        return Err(format!(
            "a tensor of shape {:?} has {numel} elements; the datum has {expected} tokens",
            tensor.shape
        ));
    }
    match &tensor.encoding {
        Some(Encoding::Dense(bytes)) => {
            let values = decode(bytes)?;
            if values.len() != expected {
                return Err(format!(
                    "a tensor of shape {:?} has {} values",
                    tensor.shape,
                    values.len()
                ));
            }
            Ok(values)
        }
        Some(Encoding::SparseCsr(csr)) => {
            if tensor.shape.len() != 2 {
                return Err("a sparse tensor must be two-dimensional".into());
            }
            let values = decode(&csr.values)?;
            let index = |bytes: &[u8]| -> Result<Vec<usize>, String> {
                whole(bytes, 8)?;
                bytes
                    .chunks_exact(8)
                    .map(|w| {
                        usize::try_from(i64::from_le_bytes([
                            w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7],
                        ]))
                        .map_err(|_| "a sparse index is negative".to_owned())
                    })
                    .collect()
            };
            let crow = index(&csr.crow_indices)?;
            let col = index(&csr.col_indices)?;
            let (rows, cols) = (tensor.shape[0] as usize, tensor.shape[1] as usize);
            if crow.len() != rows + 1 || col.len() != values.len() {
                return Err("a sparse tensor's indices do not match its shape".into());
            }
            let mut dense = vec![pad; numel];
            for row in 0..rows {
                let (start, end) = (crow[row], crow[row + 1]);
                if start > end || end > values.len() {
                    return Err("a sparse tensor's row pointers are out of range".into());
                }
                for k in start..end {
                    if col[k] >= cols {
                        return Err("a sparse column index is out of range".into());
                    }
                    dense[row * cols + col[k]] = values[k];
                }
            }
            Ok(dense)
        }
        None => Err("a tensor has no data".into()),
    }
}

fn whole(bytes: &[u8], width: usize) -> Result<(), String> {
    if bytes.len().is_multiple_of(width) {
        Ok(())
    } else {
        Err(format!(
            "tensor bytes are not a whole number of {width}-byte values"
        ))
    }
}

#[cfg(test)]
mod tests {
    //! Round trips against bytes the Python `protobuf` module wrote for the same messages.

    use super::*;
    use prost::Message;

    /// Bytes the SDK's own `tinker_public_pb2` (Python `protobuf`) wrote, once:
    /// `ForwardBackwardRequest(model_id="s:train:0", seq_id=3, loss_fn="ppo", forward_only=True)`
    /// with `loss_fn_config["clip_low_threshold"] = 0.8` (both maps) and one datum: tokens
    /// `[1, 2, 300]`, `target_tokens` int64 `[2, 300, 7]`, `advantages` float32
    /// `[0, 0.5, -1]`.
    const PYTHON_REQUEST: &str = "0a09733a747261696e3a3010031a670a100a0e0a0c01000000020000002c01000012300a0d7461726765745f746f6b656e73121f0a1802000000000000002c010000000000000700000000000000180222010312210a0a616476616e746167657312130a0c000000000000003f000080bf1801220103220370706f2a1d0a12636c69705f6c6f775f7468726573686f6c64119a9999999999e93f30013a1f0a12636c69705f6c6f775f7468726573686f6c641209099a9999999999e93f";

    /// `SampleResponse` with sequences `([5, 6], [-0.5, -1.25], LENGTH)` and `([7], [-2],
    /// STOP)`, `prompt_logprobs = [NaN, -3]`, from Python.
    const PYTHON_SAMPLE: &str = "0a160801120805000000060000001a08000000bf0000a0bf0a0c1204070000001a04000000c012080000c07f000040c0";

    /// `ForwardBackwardOutput` with one `ArrayRecord` of two datums' `logprobs` (`[-1, -2]`,
    /// `[-3]`) and `metrics["loss:sum"] = 1.5`, from Python.
    const PYTHON_OUTPUT: &str = "0a0b41727261795265636f726412470a0b41727261795265636f726412360a086c6f6770726f6273122a0a0c000080bf000000c0000040c01218000000000000000008000000000000000c00000000000000180118021a130a086c6f73733a73756d11000000000000f83f";

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn python_requests_decode() {
        let request = ForwardBackwardRequest::decode(unhex(PYTHON_REQUEST).as_slice()).unwrap();
        assert_eq!(request.model_id, "s:train:0");
        assert_eq!(request.seq_id, 3);
        assert_eq!(request.loss_fn, "ppo");
        assert!(request.forward_only);
        assert_eq!(request.loss_fn_config["clip_low_threshold"], 0.8);
        assert_eq!(
            request.loss_fn_config_v2["clip_low_threshold"].value,
            Some(LossConfigKind::Number(0.8))
        );
        let datum = &request.data[0];
        assert_eq!(tokens_of(&datum.model_input).unwrap(), vec![1, 2, 300]);
        assert_eq!(
            tensor_values(&datum.loss_fn_inputs["target_tokens"], 0.0, 3).unwrap(),
            vec![2.0, 300.0, 7.0]
        );
        assert_eq!(
            tensor_values(&datum.loss_fn_inputs["advantages"], 0.0, 3).unwrap(),
            vec![0.0, 0.5, -1.0]
        );
        // And back: what prost writes, prost (and so Python) reads the same.
        let again = ForwardBackwardRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(again, request);
    }

    #[test]
    fn responses_are_byte_for_byte_what_python_writes() {
        let sample = SampleResponse {
            sequences: vec![
                SampledSequence {
                    stop_reason: StopReason::Length as i32,
                    tokens: i32_bytes(&[5, 6]),
                    logprobs: Some(f32_bytes(&[-0.5, -1.25])),
                },
                SampledSequence {
                    stop_reason: StopReason::Stop as i32,
                    tokens: i32_bytes(&[7]),
                    logprobs: Some(f32_bytes(&[-2.0])),
                },
            ],
            prompt_logprobs: Some(f32_bytes(&[f32::NAN, -3.0])),
            prompt_cache_hit_tokens: 0,
        };
        assert_eq!(hex(&sample.encode_to_vec()), PYTHON_SAMPLE);
        let output = ForwardBackwardOutput {
            loss_fn_output_type: "ArrayRecord".into(),
            loss_fn_outputs: vec![ArrayRecord {
                type_tag: "ArrayRecord".into(),
                fields: [(
                    "logprobs".to_owned(),
                    BatchedTensor {
                        data: f32_bytes(&[-1.0, -2.0, -3.0]),
                        offsets: i64_bytes(&[0, 8, 12]),
                        dtype: DType::Float32 as i32,
                        trailing_shape: Vec::new(),
                    },
                )]
                .into_iter()
                .collect(),
                num_datums: 2,
            }],
            metrics: [("loss:sum".to_owned(), 1.5)].into_iter().collect(),
        };
        assert_eq!(hex(&output.encode_to_vec()), PYTHON_OUTPUT);
    }

    #[test]
    fn forward_backward_request_round_trips() {
        let mut datum = Datum::default();
        datum.model_input.push(Chunk {
            chunk: Some(ChunkKind::EncodedText(EncodedTextChunk {
                tokens: i32_bytes(&[1, 2, 300]),
            })),
        });
        datum.loss_fn_inputs.insert(
            "target_tokens".into(),
            Tensor {
                encoding: Some(Encoding::Dense(i64_bytes(&[2, 300, 7]))),
                dtype: DType::Int64 as i32,
                shape: vec![3],
            },
        );
        let request = ForwardBackwardRequest {
            model_id: "s:train:0".into(),
            seq_id: 3,
            data: vec![datum],
            loss_fn: "ppo".into(),
            forward_only: true,
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        let back = ForwardBackwardRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn sparse_tensors_densify_and_bad_indices_are_refused() {
        // [[0, 5], [7, 0]] as CSR.
        let tensor = Tensor {
            encoding: Some(Encoding::SparseCsr(SparseCsr {
                values: i64_bytes(&[5, 7]),
                crow_indices: i64_bytes(&[0, 1, 2]),
                col_indices: i64_bytes(&[1, 0]),
            })),
            dtype: DType::Int64 as i32,
            shape: vec![2, 2],
        };
        assert_eq!(
            tensor_values(&tensor, 0.0, 4).unwrap(),
            vec![0.0, 5.0, 7.0, 0.0]
        );
        let mut bad = tensor.clone();
        if let Some(Encoding::SparseCsr(csr)) = &mut bad.encoding {
            csr.col_indices = i64_bytes(&[1, 9]);
        }
        assert!(tensor_values(&bad, 0.0, 4).is_err());
        let mut bad = tensor;
        if let Some(Encoding::SparseCsr(csr)) = &mut bad.encoding {
            csr.crow_indices = i64_bytes(&[0, 5, 2]);
        }
        assert!(tensor_values(&bad, 0.0, 4).is_err());
    }

    #[test]
    fn a_sparse_shape_larger_than_its_datum_is_refused_before_allocating() {
        // The 167-byte attack: no values, a shape of 2^33 elements.
        let tensor = Tensor {
            encoding: Some(Encoding::SparseCsr(SparseCsr {
                values: Vec::new(),
                crow_indices: i64_bytes(&[0, 0]),
                col_indices: Vec::new(),
            })),
            dtype: DType::Float32 as i32,
            shape: vec![1, 8_589_934_592],
        };
        let error = tensor_values(&tensor, 0.0, 8).unwrap_err();
        assert!(error.contains("8 tokens"), "{error}");
        // A dense tensor whose shape disagrees with the datum is refused the same way.
        let dense = Tensor {
            encoding: Some(Encoding::Dense(f32_bytes(&[1.0, 2.0]))),
            dtype: DType::Float32 as i32,
            shape: vec![2],
        };
        assert!(tensor_values(&dense, 0.0, 3).is_err());
        assert_eq!(tensor_values(&dense, 0.0, 2).unwrap(), vec![1.0, 2.0]);
    }
}
