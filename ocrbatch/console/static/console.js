// The console's behaviour beyond plain forms and links: the delete confirmation pop-up and the
// create/edit form's domain options. Without this script the forms still work: deleting asks on
// a confirmation page, and both kinds of domain options are shown.
(function () {
  "use strict";

  function setUpDeleteDialog() {
    const form = document.getElementById("delete-form");
    const button = document.getElementById("delete-batch");
    const dialog = document.getElementById("delete-dialog");
    if (!form || !button || !dialog || typeof dialog.showModal !== "function") {
      return;
    }
    const ok = document.getElementById("delete-ok");
    const cancel = document.getElementById("delete-cancel");
    const none = document.getElementById("delete-dialog-none");
    button.addEventListener("click", function (event) {
      event.preventDefault();
      const chosen = form.querySelectorAll('input[name="ids"]:checked').length;
      none.hidden = chosen > 0;
      ok.hidden = chosen === 0;
      dialog.showModal();
      (chosen > 0 ? ok : cancel).focus();
    });
    ok.addEventListener("click", function () {
      document.getElementById("delete-confirmed").value = "1";
      dialog.close();
      form.submit();
    });
    cancel.addEventListener("click", function () {
      dialog.close();
      button.focus();
    });
  }

  function setUpDomainOptions() {
    const select = document.getElementById("domain");
    if (!select) {
      return;
    }
    function show() {
      const option = select.options[select.selectedIndex];
      const kind = option ? option.dataset.kind : "";
      document.querySelectorAll(".domain-options").forEach(function (fieldset) {
        fieldset.hidden = fieldset.dataset.kind !== kind;
      });
    }
    select.addEventListener("change", show);
    show();
  }

  document.addEventListener("DOMContentLoaded", function () {
    setUpDeleteDialog();
    setUpDomainOptions();
  });
})();
