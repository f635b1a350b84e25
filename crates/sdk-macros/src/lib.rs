//! `#[ignite::main]`: turns a user's `async fn handler(req: Request, ctx: Context)` into the
//! entry point of a handler process. Re-exported by the `ignite` crate; never used directly.
//!
//! The handler may live in `src/main.rs` (a binary crate: the macro emits `fn main`) or in
//! `src/lib.rs` (a library crate, as in the platform's recipes: the macro emits a hidden
//! `pub fn __ignite_main()` that the binary entry supplied by the builder calls). Cargo tells the
//! two apart for us: it sets `CARGO_BIN_NAME` only while compiling a binary target.
//!
//! This crate must never generate code that names anything but `::ignite::__private`: all the
//! runtime lives in the SDK, where it can be tested.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::{parse_macro_input, spanned::Spanned, Error, ItemFn};

const SHAPE: &str =
    "expected `async fn handler(req: Request, ctx: Context) -> Result<impl IntoResponse>`";

/// Marks the function that handles every request of this app. See the `ignite` crate.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return Error::new(attr.span(), "#[ignite::main] takes no arguments")
            .to_compile_error()
            .into();
    }
    let func = parse_macro_input!(item as ItemFn);
    match expand(func, std::env::var_os("CARGO_BIN_NAME").is_some()) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(func: ItemFn, is_bin: bool) -> Result<proc_macro2::TokenStream, Error> {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(Error::new(
            sig.fn_token.span(),
            format!("#[ignite::main] needs an async fn: {SHAPE}"),
        ));
    }
    if sig.inputs.len() != 2 {
        return Err(Error::new(
            sig.inputs.span(),
            format!(
                "#[ignite::main] handler takes two arguments, found {}: {SHAPE}",
                sig.inputs.len()
            ),
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(Error::new(
            sig.generics.span(),
            format!("#[ignite::main] handler cannot be generic: {SHAPE}"),
        ));
    }
    let name = &sig.ident;
    if is_bin && name == "main" {
        return Err(Error::new(
            name.span(),
            "#[ignite::main] generates `fn main`; name the handler something else, e.g. `handler`",
        ));
    }
    // On wasm32 the handler is exported as the component's wasi:http/incoming-handler instead.
    let entry = if is_bin {
        quote! {
            #[cfg(not(target_arch = "wasm32"))]
            fn main() {
                ::ignite::__private::run(#name)
            }
            #[cfg(target_arch = "wasm32")]
            fn main() {}
            #[cfg(target_arch = "wasm32")]
            ::ignite::__export_wasm!(#name);
        }
    } else {
        let entry = syn::Ident::new("__ignite_main", Span::call_site());
        quote! {
            #[cfg(not(target_arch = "wasm32"))]
            #[doc(hidden)]
            pub fn #entry() {
                ::ignite::__private::run(#name)
            }
            #[cfg(target_arch = "wasm32")]
            ::ignite::__export_wasm!(#name);
        }
    };
    Ok(quote! {
        #func
        #entry
    })
}
