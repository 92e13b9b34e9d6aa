//! Build-time helper of `ucx-sys` and `libfabric-sys`: rewrites bindgen's output so that the
//! library's exported functions are called through a table resolved when the library is
//! loaded at runtime (`dlopen`), instead of being linked.
//!
//! bindgen's own dynamic mode (`dynamic_library_name`) would turn every function into a
//! method of a library struct, including the `static inline` ones that bindgen's
//! `wrap_static_fns` compiles into the crate (they exist in no library), and would change
//! every call site. [`split_exported`] instead keeps bindgen's declarations of those
//! wrappers (`#[link_name = "<name>__extern"]`) as they are and replaces each other
//! function declaration by a free `unsafe fn` of the same name and signature that forwards
//! to the table, so callers are unchanged.
//!
//! The generated code expects the including crate to provide, at its root,
//! `fn functions() -> &'static Functions` (loading the library on first use) and
//! `fn missing(name: &str) -> !` (the panic for a function the loaded library lacks).

#![forbid(unsafe_code)]

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{FnArg, ForeignItem, Item, Pat, ReturnType};

/// An exported C function found in bindgen's output.
struct Exported {
    /// Attributes kept on the forwarding function (the header's doc comment).
    docs: Vec<syn::Attribute>,
    /// The Rust declaration's signature.
    sig: syn::Signature,
}

/// Rewrites bindgen's generated source `bindings`: declarations of `static inline` wrappers
/// stay, every other function declaration becomes an entry of `pub struct Functions` (with
/// `unsafe fn resolve(&libloading::Library) -> Functions`) and a forwarding free function.
/// Variadic functions cannot be forwarded by a Rust function and are left out.
///
/// # Panics
/// If `bindings` is not valid Rust (bindgen's output always is).
pub fn split_exported(bindings: &str) -> String {
    let file = syn::parse_file(bindings).expect("bindgen output parses as Rust");
    let mut items = Vec::with_capacity(file.items.len());
    let mut exported = Vec::new();
    for item in file.items {
        let Item::ForeignMod(mut block) = item else {
            items.push(item);
            continue;
        };
        block.items.retain(|foreign| match foreign {
            ForeignItem::Fn(f) if !is_static_wrapper(&f.attrs) => {
                if f.sig.variadic.is_none() {
                    exported.push(Exported {
                        docs: f
                            .attrs
                            .iter()
                            .filter(|a| a.path().is_ident("doc"))
                            .cloned()
                            .collect(),
                        sig: f.sig.clone(),
                    });
                }
                false
            }
            _ => true,
        });
        if !block.items.is_empty() {
            items.push(Item::ForeignMod(block));
        }
    }
    let mut out = syn::File {
        shebang: None,
        attrs: file.attrs,
        items,
    };
    out.items.extend(
        syn::parse2::<syn::File>(table(&exported))
            .expect("generated table parses")
            .items,
    );
    prettyplease::unparse(&out)
}

/// Whether a foreign function is bindgen's wrapper of a `static inline` function (declared
/// with `#[link_name = "<name>__extern"]`; its code is compiled into the crate).
fn is_static_wrapper(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        let syn::Meta::NameValue(pair) = &a.meta else {
            return false;
        };
        let syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(name),
            ..
        }) = &pair.value
        else {
            return false;
        };
        pair.path.is_ident("link_name") && name.value().ends_with("__extern")
    })
}

/// The `Functions` table, its resolver and one forwarding function per exported function.
fn table(exported: &[Exported]) -> TokenStream {
    let mut fields = Vec::new();
    let mut resolves = Vec::new();
    let mut forwards = Vec::new();
    for Exported { docs, sig } in exported {
        let name = &sig.ident;
        let symbol = syn::LitByteStr::new(
            format!("{name}\0").as_bytes(),
            proc_macro2::Span::call_site(),
        );
        let name_str = name.to_string();
        let inputs = &sig.inputs;
        let types: Vec<_> = inputs
            .iter()
            .map(|arg| match arg {
                FnArg::Typed(t) => t.ty.as_ref().clone(),
                FnArg::Receiver(_) => unreachable!("extern functions take no self"),
            })
            .collect();
        let args: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, arg)| match arg {
                FnArg::Typed(t) => match t.pat.as_ref() {
                    Pat::Ident(p) => p.ident.clone(),
                    _ => format_ident!("arg{i}"),
                },
                FnArg::Receiver(_) => unreachable!("extern functions take no self"),
            })
            .collect();
        let output = match &sig.output {
            ReturnType::Default => quote!(),
            ReturnType::Type(arrow, ty) => quote!(#arrow #ty),
        };
        let pointer = quote!(unsafe extern "C" fn(#(#types),*) #output);
        fields.push(quote!(
            #[doc = concat!("`", #name_str, "`, if the library exports it.")]
            pub #name: ::std::option::Option<#pointer>
        ));
        resolves.push(quote!(
            #name: library.get::<#pointer>(#symbol).ok().map(|symbol| *symbol)
        ));
        forwards.push(quote!(
            #(#docs)*
            #[inline]
            pub unsafe fn #name(#(#args: #types),*) #output {
                let function = crate::functions()
                    .#name
                    .unwrap_or_else(|| crate::missing(#name_str));
                function(#(#args),*)
            }
        ));
    }
    quote! {
        /// The library's exported functions, resolved once when it is loaded.
        #[derive(Clone, Copy, Debug)]
        pub struct Functions {
            #(#fields,)*
        }

        impl Functions {
            /// Resolves every function in `library`; one it does not export stays `None`.
            ///
            /// # Safety
            /// `library` must be the library these declarations were generated from (the
            /// addresses are typed with the headers' signatures), and must outlive every
            /// use of the table.
            pub unsafe fn resolve(library: &::libloading::Library) -> Self {
                Self {
                    #(#resolves,)*
                }
            }
        }

        #(#forwards)*
    }
}

#[cfg(test)]
mod tests {
    use quote::ToTokens;

    use super::split_exported;

    /// What bindgen emits for one exported function, one `static inline` wrapper, one
    /// variadic function and a type.
    const BINDGEN: &str = r#"
        pub type handle_t = *mut ::std::os::raw::c_void;
        extern "C" {
            #[doc = " Opens a thing."]
            pub fn lib_open(name: *const ::std::os::raw::c_char, out: *mut handle_t) -> ::std::os::raw::c_int;
        }
        extern "C" {
            #[link_name = "lib_read__extern"]
            pub fn lib_read(h: handle_t, len: usize) -> isize;
        }
        extern "C" {
            pub fn lib_log(format: *const ::std::os::raw::c_char, ...);
        }
    "#;

    /// Tokens of `item`, for comparisons that ignore formatting (including the trailing
    /// commas prettyplease adds to lists it wraps).
    fn tokens(item: impl ToTokens) -> String {
        item.to_token_stream()
            .to_string()
            .replace(" ,)", ")")
            .replace(" , >", " >")
    }

    #[test]
    fn exported_functions_become_a_table_and_forwarders() {
        let out = split_exported(BINDGEN);
        let file = syn::parse_file(&out).expect("the output is Rust");
        let find = |name: &str| {
            file.items
                .iter()
                .filter(|item| match item {
                    syn::Item::Type(t) => t.ident == name,
                    syn::Item::Struct(s) => s.ident == name,
                    syn::Item::Fn(f) => f.sig.ident == name,
                    _ => false,
                })
                .collect::<Vec<_>>()
        };
        let externs: Vec<&syn::ForeignItemFn> = file
            .items
            .iter()
            .filter_map(|item| match item {
                syn::Item::ForeignMod(block) => Some(block.items.iter()),
                _ => None,
            })
            .flatten()
            .filter_map(|f| match f {
                syn::ForeignItem::Fn(f) => Some(f),
                _ => None,
            })
            .collect();

        // The type and the static wrapper's declaration stay as bindgen wrote them; no
        // extern declaration of the exported function is left (it would need the symbol at
        // link time), and the variadic one is left out entirely.
        assert_eq!(find("handle_t").len(), 1, "{out}");
        let names: Vec<String> = externs.iter().map(|f| f.sig.ident.to_string()).collect();
        assert_eq!(names, ["lib_read"], "{out}");
        assert!(!out.contains("lib_log"), "{out}");

        // The exported function is a table entry of its C signature...
        let [syn::Item::Struct(table)] = find("Functions")[..] else {
            panic!("one struct Functions: {out}");
        };
        let field = table.fields.iter().next().expect("one field");
        assert_eq!(
            field.ident.as_ref().map(ToString::to_string).as_deref(),
            Some("lib_open")
        );
        let expected: syn::Type = syn::parse_str(
            "::std::option::Option<unsafe extern \"C\" fn(*const ::std::os::raw::c_char, \
             *mut handle_t) -> ::std::os::raw::c_int>",
        )
        .expect("type");
        assert_eq!(tokens(&field.ty), tokens(&expected));
        // ... resolved by its NUL-terminated name ...
        assert!(out.contains(r#"(b"lib_open\0")"#), "{out}");
        // ... and a forwarding function of the same signature, with the header's doc.
        let [syn::Item::Fn(forward)] = find("lib_open")[..] else {
            panic!("one fn lib_open: {out}");
        };
        let expected: syn::Signature = syn::parse_str(
            "unsafe fn lib_open(name: *const ::std::os::raw::c_char, out: *mut handle_t) \
             -> ::std::os::raw::c_int",
        )
        .expect("signature");
        assert_eq!(tokens(&forward.sig), tokens(&expected));
        let docs: String = forward.attrs.iter().map(tokens).collect();
        assert!(docs.contains("Opens a thing."), "{out}");
        assert!(
            tokens(&forward.block).contains("function (name , out)"),
            "{out}"
        );
    }
}
