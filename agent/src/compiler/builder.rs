//! Emitting new nodes and constants into an attribution graph, with unique names.

use crate::onnx::{self, proto::*};

/// Collects the nodes and initializers the compiler adds to the forward graph.
pub struct GraphBuilder {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    prefix: String,
    counter: usize,
}

impl GraphBuilder {
    /// `prefix` namespaces every name this builder creates (`attr/` by default), so nothing collides
    /// with the user's own tensor names.
    pub fn new(prefix: &str) -> Self {
        Self { nodes: Vec::new(), initializers: Vec::new(), prefix: prefix.to_string(), counter: 0 }
    }

    pub fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{}{}_{}", self.prefix, hint, self.counter)
    }

    /// Adds a node with one output and returns the output's name.
    pub fn op(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op_n(op_type, inputs, 1, attrs).pop().unwrap()
    }

    /// Adds a node with `n` outputs.
    pub fn op_n(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        n: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let outputs: Vec<String> = (0..n).map(|_| self.fresh(op_type)).collect();
        let name = self.fresh(&format!("{op_type}_node"));
        self.nodes.push(NodeProto {
            name,
            op_type: op_type.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            attribute: attrs,
            ..Default::default()
        });
        outputs
    }

    pub fn const_i64(&mut self, values: &[i64]) -> String {
        let name = self.fresh("i64");
        self.initializers.push(onnx::tensor_i64(&name, &[values.len() as i64], values));
        name
    }

    pub fn const_f32(&mut self, dims: &[i64], values: &[f32]) -> String {
        let name = self.fresh("f32");
        self.initializers.push(onnx::tensor_f32(&name, dims, values));
        name
    }

    pub fn scalar_f32(&mut self, v: f32) -> String {
        self.const_f32(&[], &[v])
    }

    pub fn shape(&mut self, x: &str) -> String {
        self.op("Shape", &[x], vec![])
    }

    /// `shape[start..end]` of a 1-D int64 tensor.
    pub fn slice1(&mut self, x: &str, start: i64, end: i64) -> String {
        let s = self.const_i64(&[start]);
        let e = self.const_i64(&[end]);
        let axes = self.const_i64(&[0]);
        self.op("Slice", &[x, &s, &e, &axes], vec![])
    }

    pub fn concat0(&mut self, parts: &[&str]) -> String {
        self.op("Concat", parts, vec![onnx::attr::int("axis", 0)])
    }

    pub fn reshape(&mut self, x: &str, shape: &str) -> String {
        self.op("Reshape", &[x, shape], vec![])
    }

    pub fn reshape_const(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.const_i64(shape);
        self.reshape(x, &s)
    }

    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        let a = self.const_i64(axes);
        self.op("Unsqueeze", &[x, &a], vec![])
    }

    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let a = self.const_i64(axes);
        self.op("ReduceSum", &[x, &a], vec![onnx::attr::int("keepdims", keepdims as i64)])
    }

    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], vec![])
    }

    pub fn scale(&mut self, a: &str, factor: f32) -> String {
        let f = self.scalar_f32(factor);
        self.mul(a, &f)
    }
}
