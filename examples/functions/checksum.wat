;; 64-bit FNV-1a checksum of the bytes of every input object, in order. Output: the
;; checksum, u64 little-endian.
;;   dimstore invoke KEY... --module checksum.wat --function fnv1a64 -o sum.bin
(module
  (import "dimstore" "input_count" (func $input_count (result i32)))
  (import "dimstore" "input_len" (func $input_len (param i32) (result i64)))
  (import "dimstore" "read" (func $read (param i32 i64 i32 i32) (result i32)))
  (import "dimstore" "output" (func $output (param i32 i32)))
  ;; 0..65536: read buffer; 65536: the result.
  (memory (export "memory") 2)
  (func (export "fnv1a64") (result i32)
    (local $i i32) (local $n i32) (local $off i64) (local $len i64)
    (local $got i32) (local $p i32) (local $h i64)
    (local.set $h (i64.const 0xcbf29ce484222325))
    (local.set $n (call $input_count))
    (block $inputs_done
      (loop $inputs
        (br_if $inputs_done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $len (call $input_len (local.get $i)))
        (local.set $off (i64.const 0))
        (block $object_done
          (loop $chunks
            (br_if $object_done (i64.ge_u (local.get $off) (local.get $len)))
            (local.set $got (call $read (local.get $i) (local.get $off) (i32.const 0) (i32.const 65536)))
            (if (i32.lt_s (local.get $got) (i32.const 0)) (then (return (i32.const 1))))
            (br_if $object_done (i32.eqz (local.get $got)))
            (local.set $p (i32.const 0))
            (block $chunk_done
              (loop $bytes
                (br_if $chunk_done (i32.ge_u (local.get $p) (local.get $got)))
                (local.set $h
                  (i64.mul
                    (i64.xor (local.get $h) (i64.load8_u (local.get $p)))
                    (i64.const 0x100000001b3)))
                (local.set $p (i32.add (local.get $p) (i32.const 1)))
                (br $bytes)))
            (local.set $off (i64.add (local.get $off) (i64.extend_i32_u (local.get $got))))
            (br $chunks)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $inputs)))
    (i64.store (i32.const 65536) (local.get $h))
    (call $output (i32.const 65536) (i32.const 8))
    (i32.const 0)))
