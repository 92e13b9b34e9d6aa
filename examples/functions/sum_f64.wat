;; Sum of little-endian f64 values over every input object, in order (trailing bytes that
;; do not make a whole f64 are ignored). Output: the sum, 8 bytes little-endian.
;;   dimstore invoke KEY --module sum_f64.wat --function sum_f64 -o sum.bin
(module
  (import "dimstore" "input_count" (func $input_count (result i32)))
  (import "dimstore" "input_len" (func $input_len (param i32) (result i64)))
  (import "dimstore" "read" (func $read (param i32 i64 i32 i32) (result i32)))
  (import "dimstore" "output" (func $output (param i32 i32)))
  ;; 0..65536: read buffer; 65536: the result.
  (memory (export "memory") 2)
  (func (export "sum_f64") (result i32)
    (local $i i32) (local $n i32) (local $off i64) (local $len i64)
    (local $got i32) (local $p i32) (local $acc f64)
    (local.set $n (call $input_count))
    (block $inputs_done
      (loop $inputs
        (br_if $inputs_done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $len (call $input_len (local.get $i)))
        (local.set $off (i64.const 0))
        (block $object_done
          (loop $chunks
            (br_if $object_done (i64.ge_u (local.get $off) (local.get $len)))
            ;; Chunks of 64 KiB keep every f64 whole (offsets stay multiples of 8).
            (local.set $got (call $read (local.get $i) (local.get $off) (i32.const 0) (i32.const 65536)))
            (if (i32.lt_s (local.get $got) (i32.const 0)) (then (return (i32.const 1))))
            (br_if $object_done (i32.eqz (local.get $got)))
            (local.set $p (i32.const 0))
            (block $chunk_done
              (loop $values
                (br_if $chunk_done (i32.gt_u (i32.add (local.get $p) (i32.const 8)) (local.get $got)))
                (local.set $acc (f64.add (local.get $acc) (f64.load (local.get $p))))
                (local.set $p (i32.add (local.get $p) (i32.const 8)))
                (br $values)))
            (local.set $off (i64.add (local.get $off) (i64.extend_i32_u (local.get $got))))
            (br $chunks)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $inputs)))
    (f64.store (i32.const 65536) (local.get $acc))
    (call $output (i32.const 65536) (i32.const 8))
    (i32.const 0)))
