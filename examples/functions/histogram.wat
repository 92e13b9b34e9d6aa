;; Byte histogram over every input object. Output: 256 counts, each u64 little-endian
;; (count of byte value 0 first).
;;   dimstore invoke KEY... --module histogram.wat --function histogram -o hist.bin
(module
  (import "dimstore" "input_count" (func $input_count (result i32)))
  (import "dimstore" "input_len" (func $input_len (param i32) (result i64)))
  (import "dimstore" "read" (func $read (param i32 i64 i32 i32) (result i32)))
  (import "dimstore" "output" (func $output (param i32 i32)))
  ;; 0..65536: read buffer; 65536..67584: the counts.
  (memory (export "memory") 2)
  (func (export "histogram") (result i32)
    (local $i i32) (local $n i32) (local $off i64) (local $len i64)
    (local $got i32) (local $p i32) (local $slot i32)
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
                (local.set $slot
                  (i32.add (i32.const 65536) (i32.shl (i32.load8_u (local.get $p)) (i32.const 3))))
                (i64.store (local.get $slot) (i64.add (i64.load (local.get $slot)) (i64.const 1)))
                (local.set $p (i32.add (local.get $p) (i32.const 1)))
                (br $bytes)))
            (local.set $off (i64.add (local.get $off) (i64.extend_i32_u (local.get $got))))
            (br $chunks)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $inputs)))
    (call $output (i32.const 65536) (i32.const 2048))
    (i32.const 0)))
