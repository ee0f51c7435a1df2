//! Streams of products read page by page, so that a slow reader holds no database
//! connection between pages and a reader that goes away stops the reading.

use std::future::Future;
use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::{Instrument, Span};

use crate::pb;
use crate::store::{ProductRecord, StoreError};

/// Products read per query.
pub(crate) const PAGE_SIZE: i64 = 500;
/// Products buffered between the database and a slow reader.
const BUFFER: usize = 256;

pub(crate) type ProductStream = Pin<Box<dyn Stream<Item = Result<pb::Product, Status>> + Send>>;

/// Streams the products that `next_page(after_id)` returns, page after page, until a page
/// comes back short. Pages must be in id order.
pub(crate) fn stream_pages<F, Fut>(span: Span, mut next_page: F) -> ProductStream
where
    F: FnMut(i64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<ProductRecord>, StoreError>> + Send,
{
    let (sender, receiver) = mpsc::channel(BUFFER);
    tokio::spawn(
        async move {
            let mut after_id = 0;
            loop {
                let page = match next_page(after_id).await {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = sender.send(Err(error.into())).await;
                        return;
                    }
                };
                let last_page = (page.len() as i64) < PAGE_SIZE;
                for record in page {
                    after_id = record.id;
                    if sender.send(Ok(record.into())).await.is_err() {
                        return; // the reader went away
                    }
                }
                if last_page {
                    return;
                }
            }
        }
        .instrument(span),
    );
    Box::pin(ReceiverStream::new(receiver))
}
