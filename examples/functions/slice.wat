;; A slice of the first input object. Argument: offset and length, each u64 little-endian
;; (16 bytes). Output: the bytes from offset, up to length, cut at the object's end.
;; Returns 2 for an argument that is not 16 bytes, 3 for an offset past the end.
;;   printf ... > arg.bin; dimstore invoke KEY --module slice.wat --function slice --arg-file arg.bin
(module
  (import "dimstore" "read" (func $read (param i32 i64 i32 i32) (result i32)))
  (import "dimstore" "arg_len" (func $arg_len (result i32)))
  (import "dimstore" "read_arg" (func $read_arg (param i32)))
  (import "dimstore" "output" (func $output (param i32 i32)))
  ;; 0..65536: read buffer; 65536..65552: the argument.
  (memory (export "memory") 2)
  (func (export "slice") (result i32)
    (local $off i64) (local $left i64) (local $want i32) (local $got i32)
    (if (i32.ne (call $arg_len) (i32.const 16)) (then (return (i32.const 2))))
    (call $read_arg (i32.const 65536))
    (local.set $off (i64.load (i32.const 65536)))
    (local.set $left (i64.load (i32.const 65544)))
    (block $done
      (loop $chunks
        (br_if $done (i64.eqz (local.get $left)))
        (local.set $want
          (if (result i32) (i64.lt_u (local.get $left) (i64.const 65536))
            (then (i32.wrap_i64 (local.get $left)))
            (else (i32.const 65536))))
        (local.set $got (call $read (i32.const 0) (local.get $off) (i32.const 0) (local.get $want)))
        (if (i32.lt_s (local.get $got) (i32.const 0)) (then (return (i32.const 3))))
        (br_if $done (i32.eqz (local.get $got)))
        (call $output (i32.const 0) (local.get $got))
        (local.set $off (i64.add (local.get $off) (i64.extend_i32_u (local.get $got))))
        (local.set $left (i64.sub (local.get $left) (i64.extend_i32_u (local.get $got))))
        (br $chunks)))
    (i32.const 0)))
