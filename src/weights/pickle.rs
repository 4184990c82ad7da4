//! The part of Python's pickle format that `torch.save` writes, read without running code.
//!
//! A pickle is a program for a small stack machine; Python's unpickler runs it and calls
//! whatever callables it names, which is why loading an untrusted `.pth` with `torch.load`
//! can run arbitrary code. This machine calls nothing. It builds plain values (numbers,
//! strings, tuples, lists, dicts), understands the few callables that rebuild tensors
//! (`torch._utils._rebuild_tensor_v2` and its relatives) and `collections.OrderedDict`,
//! and turns every other call or class instance into an opaque [`Value::Object`] that
//! records only its name.
//!
//! Values live in one arena and refer to each other by index, so a hostile pickle can
//! neither build a reference cycle that leaks nor a nesting that overflows the stack when
//! dropped; every length is checked against the bytes that remain before anything is
//! allocated, so memory stays proportional to the input.

use std::collections::HashMap;

/// An index into [`Pickle::values`].
pub(crate) type Id = usize;

/// A value built by the machine.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for i64 (little-endian two's complement bytes).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    /// Lists, and sets (order kept).
    List(Vec<Id>),
    /// Dicts and OrderedDicts, in insertion order (a repeated key: the last counts).
    Dict(Vec<(Id, Id)>),
    /// A name from GLOBAL or STACK_GLOBAL: `module.name`, never imported.
    Global(String, String),
    /// What a persistent id names (for torch: a storage tuple).
    Persistent(Id),
    /// A dense tensor: a view of a storage.
    Tensor(TensorView),
    /// The result of a call, or an instance of a class, that the machine does not run.
    Object(String),
}

/// A tensor as `_rebuild_tensor_v2` describes it: shape and strides (in elements) over a
/// storage that a persistent id names.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorView {
    /// The persistent id (a [`Value::Persistent`]'s content) of its storage.
    pub storage: Id,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A pickle read to its STOP.
#[derive(Debug)]
pub(crate) struct Pickle {
    pub values: Vec<Value>,
    pub root: Id,
    /// Bytes read, STOP included (a legacy checkpoint is several pickles in a row).
    pub len: usize,
}

impl Pickle {
    pub fn get(&self, id: Id) -> &Value {
        &self.values[id]
    }

    /// The string `id` holds, if it is one.
    pub fn str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The non-negative integer `id` holds, if it is one.
    pub fn usize(&self, id: Id) -> Option<usize> {
        match self.get(id) {
            Value::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        }
    }

    /// The value under the string key `key` of the dict `id`.
    pub fn dict_get(&self, id: Id, key: &str) -> Option<Id> {
        match self.get(id) {
            Value::Dict(items) => items
                .iter()
                .rev()
                .find(|(k, _)| self.str(*k) == Some(key))
                .map(|&(_, v)| v),
            _ => None,
        }
    }
}

/// Reads one pickle from the start of `bytes`. Errors name the opcode and its offset.
pub(crate) fn load(bytes: &[u8]) -> Result<Pickle, String> {
    let mut m = Machine {
        input: bytes,
        pos: 0,
        out: Pickle {
            values: Vec::new(),
            root: 0,
            len: 0,
        },
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    m.out.root = m.run()?;
    m.out.len = m.pos;
    Ok(m.out)
}

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    /// The values built so far; root and length are set at STOP.
    out: Pickle,
    stack: Vec<Id>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

/// The most a GLOBAL's module or name, or a text-mode argument, may take.
const MAX_LINE: usize = 1024;

impl Machine<'_> {
    fn run(&mut self) -> Result<Id, String> {
        loop {
            let at = self.pos;
            let op = self.bytes(1).map_err(|e| format!("{e} (no STOP)"))?[0];
            match self.step(op) {
                Ok(Some(root)) => return Ok(root),
                Ok(None) => {}
                Err(e) => return Err(format!("pickle opcode 0x{op:02x} at byte {at}: {e}")),
            }
        }
    }

    /// Executes one opcode; the root value once STOP is reached.
    fn step(&mut self, op: u8) -> Result<Option<Id>, String> {
        match op {
            0x80 => {
                let proto = self.bytes(1)?[0];
                if proto > 5 {
                    return Err(format!("pickle protocol {proto} (at most 5 exists)"));
                }
            }
            0x95 => {
                self.bytes(8)?; // FRAME: a length hint only
            }
            b'.' => return self.pop().map(Some),
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                if self.marks.last() == Some(&self.stack.len()) {
                    self.marks.pop();
                } else {
                    self.pop()?;
                }
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?;
                self.stack.push(top);
            }
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(self.array()?);
                self.push(Value::Int(v.into()));
            }
            b'K' => {
                let v = self.bytes(1)?[0];
                self.push(Value::Int(v.into()));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.array()?);
                self.push(Value::Int(v.into()));
            }
            0x8a => {
                let n = usize::from(self.bytes(1)?[0]);
                self.long(n)?;
            }
            0x8b => {
                let n = i32::from_le_bytes(self.array()?);
                let n = usize::try_from(n).map_err(|_| format!("negative length {n}"))?;
                self.long(n)?;
            }
            b'I' | b'L' => {
                let line = self.line()?;
                let text = line.trim_end_matches('L');
                let v = match text {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    _ => Value::Int(text.parse().map_err(|_| format!("bad integer '{line}'"))?),
                };
                self.push(v);
            }
            b'F' => {
                let line = self.line()?;
                let v = line.parse().map_err(|_| format!("bad float '{line}'"))?;
                self.push(Value::Float(v));
            }
            b'G' => {
                let v = f64::from_be_bytes(self.array()?);
                self.push(Value::Float(v));
            }
            b'X' => {
                let n = u32::from_le_bytes(self.array()?);
                self.text(n.into())?;
            }
            0x8c => {
                let n = self.bytes(1)?[0];
                self.text(n.into())?;
            }
            0x8d => {
                let n = u64::from_le_bytes(self.array()?);
                self.text(n)?;
            }
            // Python 2 strings: text when they are UTF-8, bytes otherwise.
            b'T' | b'U' => {
                let n = if op == b'T' {
                    let n = i32::from_le_bytes(self.array()?);
                    u64::try_from(n).map_err(|_| format!("negative length {n}"))?
                } else {
                    self.bytes(1)?[0].into()
                };
                let raw = self.sized(n)?;
                let v = match std::str::from_utf8(raw) {
                    Ok(s) => Value::Str(s.to_string()),
                    Err(_) => Value::Bytes(raw.to_vec()),
                };
                self.push(v);
            }
            b'B' => {
                let n = u32::from_le_bytes(self.array()?);
                self.blob(n.into())?;
            }
            b'C' => {
                let n = self.bytes(1)?[0];
                self.blob(n.into())?;
            }
            0x8e | 0x96 => {
                let n = u64::from_le_bytes(self.array()?);
                self.blob(n)?;
            }
            b')' => self.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                // Its n values must lie above the last MARK, as in Python, whose MARK starts
                // a fresh stack.
                let n = usize::from(op - 0x84);
                if self.stack.len() < self.marks.last().copied().unwrap_or(0) + n {
                    return Err("stack underflow (or a MARK among the tuple's values)".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Value::Tuple(items));
            }
            b']' | 0x8f => self.push(Value::List(Vec::new())),
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(items));
            }
            b'a' => {
                let v = self.pop()?;
                self.extend(vec![v])?;
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.extend(items)?;
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.push(Value::List(items));
            }
            b'}' => self.push(Value::Dict(Vec::new())),
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs(&items)?;
                self.push(Value::Dict(pairs));
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.insert(vec![(k, v)])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = pairs(&items)?;
                self.insert(pairs)?;
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global(module, name));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (self.out.get(module), self.out.get(name)) {
                    (Value::Str(m), Value::Str(n)) => {
                        let g = Value::Global(m.clone(), n.clone());
                        self.push(g);
                    }
                    _ => return Err("STACK_GLOBAL needs two strings".into()),
                }
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.call(callable, args, true)?;
                self.stack.push(v);
            }
            0x81 | 0x92 => {
                if op == 0x92 {
                    self.pop()?; // keyword arguments
                }
                self.pop()?;
                let class = self.pop()?;
                let name = self.name(class);
                self.push(Value::Object(name));
            }
            b'b' => {
                // BUILD sets an object's state (`__setstate__`); nothing here needs it.
                self.pop()?;
                self.top()?;
            }
            b'p' | b'q' | b'r' => {
                let key = self.memo_key(op)?;
                self.put(key)?;
            }
            0x94 => {
                let key = self.memo.len() as u64;
                self.put(key)?;
            }
            b'g' | b'h' | b'j' => {
                let key = self.memo_key(op)?;
                self.fetch(key)?;
            }
            b'Q' => {
                let pid = self.pop()?;
                self.push(Value::Persistent(pid));
            }
            b'P' => {
                let line = self.line()?;
                let pid = self.push_value(Value::Str(line));
                self.push(Value::Persistent(pid));
            }
            _ => {
                return Err(
                    "not an opcode torch.save writes (protocol 0/1 strings and objects, \
                     extensions and out-of-band buffers are not read)"
                        .into(),
                );
            }
        }
        Ok(None)
    }

    /// Applies a callable to its arguments, without running anything: tensor rebuilds,
    /// empty OrderedDicts and latin-1 byte strings are understood; anything else becomes
    /// an opaque object. `outer` is false inside `_rebuild_from_type_v2`, which may not nest.
    fn call(&mut self, callable: Id, args: Id, outer: bool) -> Result<Id, String> {
        let a = match self.out.get(args) {
            Value::Tuple(a) => a.clone(),
            _ => return Err("REDUCE's arguments are not a tuple".into()),
        };
        let (module, name) = match self.out.get(callable) {
            Value::Global(m, n) => (m.clone(), n.clone()),
            _ => return Err("REDUCE of something that is not a global name".into()),
        };
        let v = match (module.as_str(), name.as_str(), a.as_slice()) {
            ("collections", "OrderedDict", []) => Value::Dict(Vec::new()),
            (
                "torch._utils",
                "_rebuild_tensor_v2" | "_rebuild_tensor",
                [storage, offset, shape, stride, ..],
            ) => Value::Tensor(self.tensor(*storage, *offset, *shape, *stride)?),
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state", [t, ..])
                if matches!(self.out.get(*t), Value::Tensor(_)) =>
            {
                return Ok(*t);
            }
            ("torch._tensor", "_rebuild_from_type_v2", [func, _, inner, ..]) if outer => {
                return self.call(*func, *inner, false);
            }
            ("_codecs", "encode", [text, encoding])
                if matches!(self.out.str(*encoding), Some("latin1" | "latin-1")) =>
            {
                let text = self
                    .out
                    .str(*text)
                    .ok_or("_codecs.encode of a non-string")?;
                let bytes = text
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)).map_err(|_| "not latin-1"))
                    .collect::<Result<Vec<u8>, _>>()?;
                Value::Bytes(bytes)
            }
            _ => Value::Object(format!("{module}.{name}(...)")),
        };
        Ok(self.push_value(v))
    }

    fn tensor(&self, storage: Id, offset: Id, shape: Id, stride: Id) -> Result<TensorView, String> {
        let Value::Persistent(storage) = self.out.get(storage) else {
            return Err("a tensor whose storage is not a persistent id".into());
        };
        let offset = self
            .out
            .usize(offset)
            .ok_or("a tensor's storage offset is not a count")?;
        let ints = |id: Id, what: &str| -> Result<Vec<usize>, String> {
            match self.out.get(id) {
                Value::Tuple(items) => items
                    .iter()
                    .map(|&i| {
                        self.out
                            .usize(i)
                            .ok_or(format!("a tensor's {what} has a non-count"))
                    })
                    .collect(),
                _ => Err(format!("a tensor's {what} is not a tuple")),
            }
        };
        let shape = ints(shape, "shape")?;
        let stride = ints(stride, "stride")?;
        if shape.len() != stride.len() {
            return Err(format!(
                "a tensor with {} sizes and {} strides",
                shape.len(),
                stride.len()
            ));
        }
        Ok(TensorView {
            storage: *storage,
            offset,
            shape,
            stride,
        })
    }

    fn name(&self, class: Id) -> String {
        match self.out.get(class) {
            Value::Global(m, n) => format!("{m}.{n}"),
            _ => "an object".into(),
        }
    }

    fn push_value(&mut self, v: Value) -> Id {
        self.out.values.push(v);
        self.out.values.len() - 1
    }

    fn push(&mut self, v: Value) {
        let id = self.push_value(v);
        self.stack.push(id);
    }

    fn pop(&mut self) -> Result<Id, String> {
        if self.marks.last() == Some(&self.stack.len()) {
            return Err("a value was expected, a MARK found".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn top(&self) -> Result<Id, String> {
        if self.marks.last() == Some(&self.stack.len()) {
            return Err("a value was expected, a MARK found".into());
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| "stack underflow".into())
    }

    /// The values above the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Id>, String> {
        let at = self.marks.pop().ok_or("no MARK to pop to")?;
        if at > self.stack.len() {
            return Err("values below a MARK were taken before it was popped".into());
        }
        Ok(self.stack.split_off(at))
    }

    fn extend(&mut self, items: Vec<Id>) -> Result<(), String> {
        let target = self.top()?;
        match &mut self.out.values[target] {
            Value::List(l) => l.extend(items),
            Value::Object(_) => {} // list subclasses: contents not needed
            _ => return Err("APPEND to something that is not a list".into()),
        }
        Ok(())
    }

    fn insert(&mut self, pairs: Vec<(Id, Id)>) -> Result<(), String> {
        let target = self.top()?;
        match &mut self.out.values[target] {
            // A pickled dict comes from a dict and repeats no key; if a hostile one does,
            // lookups take the last, as Python's SETITEM would.
            Value::Dict(d) => d.extend(pairs),
            Value::Object(_) => {} // dict subclasses: contents not needed
            _ => return Err("SETITEM on something that is not a dict".into()),
        }
        Ok(())
    }

    /// A PUT's or GET's memo key: a text line, one byte or four, by opcode.
    fn memo_key(&mut self, op: u8) -> Result<u64, String> {
        match op {
            b'p' | b'g' => {
                let line = self.line()?;
                line.parse().map_err(|_| format!("bad memo key '{line}'"))
            }
            b'q' | b'h' => Ok(self.bytes(1)?[0].into()),
            _ => Ok(u32::from_le_bytes(self.array()?).into()),
        }
    }

    fn put(&mut self, key: u64) -> Result<(), String> {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn fetch(&mut self, key: u64) -> Result<(), String> {
        let id = *self
            .memo
            .get(&key)
            .ok_or(format!("memo key {key} never set"))?;
        self.stack.push(id);
        Ok(())
    }

    fn long(&mut self, n: usize) -> Result<(), String> {
        let raw = self.sized(n as u64)?;
        let v = if n <= 8 {
            let fill = if raw.last().is_some_and(|b| b & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut b = [fill; 8];
            b[..n].copy_from_slice(raw);
            Value::Int(i64::from_le_bytes(b))
        } else {
            Value::BigInt(raw.to_vec())
        };
        self.push(v);
        Ok(())
    }

    fn text(&mut self, n: u64) -> Result<(), String> {
        let raw = self.sized(n)?;
        let s = std::str::from_utf8(raw).map_err(|_| "a string that is not UTF-8")?;
        let v = Value::Str(s.to_string());
        self.push(v);
        Ok(())
    }

    fn blob(&mut self, n: u64) -> Result<(), String> {
        let raw = self.sized(n)?.to_vec();
        self.push(Value::Bytes(raw));
        Ok(())
    }

    /// The next `n` bytes, `n` checked against what remains before anything is taken.
    fn sized(&mut self, n: u64) -> Result<&[u8], String> {
        let n = usize::try_from(n).map_err(|_| format!("length {n}"))?;
        self.bytes(n)
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], String> {
        let left = self.input.len() - self.pos;
        if n > left {
            return Err(format!("needs {n} bytes, {left} remain"));
        }
        let s = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.bytes(N)?.try_into().expect("N bytes"))
    }

    /// A newline-terminated ASCII argument of a text-mode opcode.
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.input[self.pos..];
        let end = rest
            .iter()
            .take(MAX_LINE + 1)
            .position(|&b| b == b'\n')
            .ok_or("an unterminated or over-long text argument")?;
        let s =
            std::str::from_utf8(&rest[..end]).map_err(|_| "a text argument that is not UTF-8")?;
        let s = s.to_string();
        self.pos += end + 1;
        Ok(s)
    }
}

fn pairs(items: &[Id]) -> Result<Vec<(Id, Id)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("an odd number of values for a dict".into());
    }
    Ok(items.chunks_exact(2).map(|p| (p[0], p[1])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values() {
        // {'a': (1, -2, 3.5, 'é', b'\x00', None, True), 'b': [2**70]} at protocol 2.
        let p = load(
            b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00X\x02\x00\x00\x00\xc3\xa9C\x01\x00N\x88tq\x02X\x01\x00\x00\x00b]q\x03\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x40aq\x04u.",
        )
        .unwrap();
        let a = p.dict_get(p.root, "a").unwrap();
        let Value::Tuple(items) = p.get(a) else {
            panic!("a is {:?}", p.get(a))
        };
        let got: Vec<&Value> = items.iter().map(|&i| p.get(i)).collect();
        assert_eq!(
            got,
            [
                &Value::Int(1),
                &Value::Int(-2),
                &Value::Float(3.5),
                &Value::Str("é".into()),
                &Value::Bytes(vec![0]),
                &Value::None,
                &Value::Bool(true)
            ]
        );
        let b = p.dict_get(p.root, "b").unwrap();
        let Value::List(l) = p.get(b) else {
            panic!("b is {:?}", p.get(b))
        };
        assert!(matches!(p.get(l[0]), Value::BigInt(v) if v.len() == 9 && v[8] == 0x40));
    }

    #[test]
    fn calls_run_nothing() {
        // os.system('echo hi') as a pickle: an opaque object, nothing run.
        let p = load(b"\x80\x02cos\nsystem\nX\x07\x00\x00\x00echo hi\x85R.").unwrap();
        assert_eq!(p.get(p.root), &Value::Object("os.system(...)".into()));
    }

    #[test]
    fn malformed_pickles_are_errors() {
        for (bytes, want) in [
            (&b""[..], "no STOP"),
            (b"\x80\x02X\xff\xff\xff\x7f", "remain"),
            (b"\x80\x02h\x05.", "never set"),
            (b"\x80\x02.", "underflow"),
            (b"\x80\x02(u.", "underflow"),
            (b"\x80\x02K\x01K\x02R.", "not a tuple"),
            (b"\x80\x06.", "protocol 6"),
            (b"\x80\x02S'a'\n.", "not an opcode"),
            (b"\x80\x02(K\x01d.", "odd number"),
            // TUPLE3 reaching below a MARK, then TUPLE to that MARK: found by fuzzing, it
            // made the reader panic (split_off past the end).
            (
                b"\x80\x02K\x01K\x02(K\x03\x87t.",
                "MARK among the tuple's values",
            ),
            (b"\x80\x02K\x01(\x85t.", "MARK among the tuple's values"),
        ] {
            let e = load(bytes).unwrap_err();
            assert!(e.contains(want), "{bytes:?}: {e}");
        }
    }
}
